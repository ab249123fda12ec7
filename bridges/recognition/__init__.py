"""Face-recognition training on synthetic sets: iResNet backbones, margin heads
(ArcFace, CosFace, AdaFace), GroupFace, the streaming folder dataset and the training
loop behind `python -m bridges.train` (see docs/recognition.md)."""
