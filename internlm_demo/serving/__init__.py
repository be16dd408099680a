"""Who asks for tokens: ChatModel, the remote OpenAI client and the OpenAI-compatible server."""
