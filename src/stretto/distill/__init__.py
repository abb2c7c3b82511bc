"""Distillation: few-step students trained from a many-step teacher.

- `dmd.py`: Distribution Matching Distillation's losses (DMD / DMD2), model-agnostic: the generator's
  gradient from a real and a fake score, the fake score's own loss, the GAN terms. Image students and the
  world model's Self Forcing use this one implementation.
- `critic.py`: the fake-score network's feature hook and the small GAN classifier head on it.
- `image_dmd.py`: DMD2 for the shapes Flux (two-time-scale updates, backward simulation, GAN term).
- `flow_map.py`: a flow-map student X(t -> r) of the same teacher (AnyFlow's dual-timestep map, trained by
  semigroup self-distillation grounded in the teacher's guided velocity).
- `students.py`: what both image students share: the teacher, the data, the student's config, resume, export.
"""
