"""The application layer of ep_jax: everything ``ep-jax`` needs around the numerical core.

``config`` (``TrainConfig``: nested sections, presets), ``data`` (offline datasets), ``build``
(the learner a config describes), ``train`` (the training loop), ``checkpoint`` (orbax
save/restore, resume checks), ``plots`` and ``cli`` (the ``ep-jax`` command). The core
(``ep_jax`` outside this package) never imports from here.
"""
