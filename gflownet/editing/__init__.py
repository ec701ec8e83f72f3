"""Knowledge edits of a frozen language model (the answerer of the contradiction task): ROME, a
constrained LoRA fine-tune (FT-L style) and saved, reusable edit sets. ``store.edited_model`` is
the entry point; ``docs/design.md`` ("Edited answerers") says how a run uses it."""
