"""The one inference path: prompts + images -> answers, shared by chat, evaluation and hooks."""
