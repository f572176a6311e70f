"""Checkpoint ⇄ `.nervi`: post-training quantization, Huffman coding and the archive file."""

from .archive import ArchiveInfo, compression_ratio, read_archive, read_header, write_archive
from .quantize import QuantizedModel, QuantizedTensor, dequantize, quantize

__all__ = ["ArchiveInfo", "QuantizedModel", "QuantizedTensor", "compression_ratio", "dequantize",
           "quantize", "read_archive", "read_header", "write_archive"]
