"""Data preparation: recordings to a preprocessed run folder (`preprocess`, `prepare`, `demo`) and the
training dataset over it (`dataset`)."""
