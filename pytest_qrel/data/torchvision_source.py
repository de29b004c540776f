"""(in progress) dataset source module; registers its entries in DATASET_SOURCES on import."""
