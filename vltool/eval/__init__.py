"""Evaluation: multiple-choice prompts, answer extraction and accuracy."""
