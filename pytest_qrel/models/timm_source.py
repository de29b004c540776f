"""(in progress) model source module; registers its entries in MODEL_SOURCES on import."""
