"""The agent runtime: a forged checkpoint plus its tools, memory and retrieval, behind a generation loop
that pauses for tool calls; a chat REPL and an OpenAI-compatible server on top. No Prefect."""
