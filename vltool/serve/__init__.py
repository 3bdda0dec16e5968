"""`vltool serve`: an OpenAI-compatible API and a web chat page for a trained model."""
