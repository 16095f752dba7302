"""What Enfoque Patch CLIP installs on a clone of the CLIP, one file per job: the encoders it knows
(`encoders`), its probe (`probe`), tokenizer (`tokenizer`), encode patch (`encode`), attention patch
(`attention`), how it is installed (`install`), and the reading of what it recorded (`readout`,
`weights`)."""
