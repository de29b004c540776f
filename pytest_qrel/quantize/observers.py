"""(in progress) quantization method module; registers its entries in QUANTIZERS on import."""
