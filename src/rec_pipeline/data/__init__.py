"""Data: the raw Ali-CCP format (parse, write, generate), vocabularies, encoding, the train/valid
split and negative sampling, the typed dataset metadata, and the tensor-resident batch loader."""
