"""The concept search: scoring, prompts, history policy, control selection and the loop."""
