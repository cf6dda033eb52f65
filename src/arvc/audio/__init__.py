"""Signal processing, no model: audio in and out (`io`), spectrograms (`mel`), pitch (`f0`) and
content features (`features`)."""
