"""Pretraining the project's own generator (`local_gan`): its GAN, discriminator, source split and training loop.

`ensure_generator`, local_gan's declared `preparer`, is the run's step that trains a missing checkpoint;
`metassl pretrain` trains one on demand. Both go through `pretrain_generator`, so one recipe gives one generator
whichever path trains it.
"""
