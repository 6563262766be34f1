"""Writers of mbgen graphs in other frameworks' formats (TFLite for TFLM cross-checks)."""
