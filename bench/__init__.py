"""The served-vs-raw-ONNX-Runtime benchmark (run ./bench/run.sh --help)."""
