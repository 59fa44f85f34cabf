"""The 4x shapes upscaler: an LDMSuperResolutionPipeline trained on 256 px shapes pictures."""
