"""Kubeflow pipelines of mirec (kfp v2): definitions here, compiled YAML under pipelines/compiled/."""
