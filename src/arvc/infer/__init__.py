"""Voice conversion with a trained model: load it, optionally retrieve from the voice's index, convert."""
