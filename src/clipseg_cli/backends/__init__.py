"""Runtimes behind the Segmenter: torch (`pytorch`), ONNX Runtime (`ort`) over graphs exported once (`export`,
kept in `cache`), and the tokenizer that spares the ONNX Runtime path transformers (`tokenizer`)."""
