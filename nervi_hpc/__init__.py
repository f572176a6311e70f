"""nervi-hpc: compress collections of scientific-visualization renders into one NeRVI archive."""

__version__ = "0.1.0"
