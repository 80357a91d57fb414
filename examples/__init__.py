"""Example LightningModules and LightningDataModules for lightning-sync.

None of them imports lightning-sync: the callbacks attach from the Trainer or the YAML config.
Run the CLI from the repository root so that ``examples.*`` class paths import.
"""
