"""RSFM training package: MTP models, data readers, pretraining, finetuning, evaluation and export."""
