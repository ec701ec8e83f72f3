"""Questions whose answers contradict a knowledge edit: edit records, prompts, answerer, judges, reward."""
