"""The rate-distortion benchmark: rd maths, baseline codecs, the bench runner."""
