"""The PEFT benchmark (issue 20): torchslim's parameter-efficient fine-tuning against Hugging Face peft."""
