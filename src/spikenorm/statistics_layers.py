"""Layers with running statistics, seen through what re-calibration and diagnostics need.

:func:`statistics_layers` finds them by type: every spikenorm norm layer (:class:`~spikenorm.norm.TimeMajorNorm`,
MPBN membrane norms inside neurons included) and every torch ``_BatchNorm`` with running statistics
(``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, SpikingJelly's multi-step ``layer.BatchNorm*d`` and
``layer.TemporalEffectiveBatchNorm*d``, whose channel axis is 2 of ``[T, B, C, ...]``). Each is wrapped in a
:class:`StatisticsLayer`: the axes its statistics pool, its eval-mode map given statistics, its running buffers, and
the ``T`` its inputs must have.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from spikenorm.norm import TimeMajorNorm, accumulate_over_steps, unbiased_accumulated
from spikenorm.norm.stats import PooledMoments
from spikenorm.precision import accumulation_dtype
from spikenorm.validation import check_time_steps


class StatisticsLayer:
    """A BN-like layer seen through what re-calibration needs: its pooled axes, its eval-mode map given
    statistics, its running-statistics buffers, and the ``T`` its inputs must have.

    Args:
        module: the layer.
        name: its qualified name in the model (for messages).
        time_steps: ``T`` of the model's multi-step forward, when known: the leading axis every input of a
            time-major layer (``[T, B, ...]``) must have. A layer built for ``T`` steps (``bntt``, ``tebn``, ``tab``)
            checks its own ``T`` instead; a layer called once per step (``[B, C, ...]``, snnTorch) checks none.
    """

    def __init__(self, module: nn.Module, name: str = "", time_steps: int | None = None) -> None:
        self.module = module
        self.name = name
        self.time_steps = self.own_time_steps() or (time_steps if self.time_major else None)

    @property
    def time_major(self) -> bool:
        """Whether the layer's inputs are laid out ``[T, B, ...]``."""
        return True

    def own_time_steps(self) -> int | None:
        """The ``T`` the layer itself was built for, if any."""
        return None

    def measure(self, moments: PooledMoments, x: Tensor) -> None:
        """Merge the input ``x`` of one call into ``moments``, after checking its leading axis against ``T``
        (a shape comparison; catches batch-major ``[B, T, ...]`` input before any statistic is written). A norm
        called step by step inside a :func:`~spikenorm.neurons.stateful` scope (its ``in_sequence``) is not checked."""
        if self.time_steps is not None and not getattr(self.module, "in_sequence", False):
            check_time_steps(x, f"recalibrate_bn: layer '{self.name}' ({type(self.module).__name__})", self.time_steps)
        moments.add(x, self.reduce_dims(x))

    @property
    def running_mean(self) -> Tensor:
        return self.module.running_mean

    @property
    def running_var(self) -> Tensor:
        return self.module.running_var

    unbiased: bool = True

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def step_reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        """The axes to pool for the statistics of one time step: ``x`` is one step ``[1, B, ...]`` of a time-major
        layer, or one call ``[B, ...]`` of a layer called once per step; the result has the shared feature shape."""
        return self.reduce_dims(x)

    def running_at(self, step: int) -> tuple[Tensor, Tensor]:
        """The running mean and variance the layer normalises step ``step`` with in eval mode."""
        return self.running_mean, self.running_var

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """The layer's eval-mode output for input ``x`` had its running statistics been ``mean, var``."""
        raise NotImplementedError

    def statistics(self, moments: PooledMoments, unbiased: bool) -> tuple[Tensor, Tensor]:
        """The mean and variance the layer normalises with, given the pooled ``moments`` of its inputs."""
        return moments.mean, moments.variance(unbiased)

    def normalized_by(self, x: Tensor, moments: PooledMoments) -> Tensor:
        """:meth:`normalized` with the mean and biased variance accumulated in ``moments`` so far (given in the
        accumulation dtype of ``x``, float32 for half precision), returned in the dtype of ``x``."""
        dtype = accumulation_dtype(x.dtype)
        mean, var = self.statistics(moments, unbiased=False)
        return self.normalized(x, mean.to(dtype), var.to(dtype)).to(x.dtype)

    def write(self, moments: PooledMoments) -> None:
        mean, var = self.statistics(moments, unbiased=self.unbiased)
        self.running_mean.copy_(mean.to(self.running_mean.dtype))
        self.running_var.copy_(var.to(self.running_var.dtype))


class _SpikenormNorm(StatisticsLayer):
    """A :class:`~spikenorm.norm.TimeMajorNorm` (``[T, B, *features, ...]``; BNTT keeps one statistic per step, TAB
    one per step accumulated over the steps up to it)."""

    def __init__(self, module: TimeMajorNorm, name: str = "", time_steps: int | None = None) -> None:
        super().__init__(module, name, time_steps)
        self.unbiased = module.running_var_unbiased

    def own_time_steps(self) -> int | None:
        """``time_steps`` of a norm built for ``T`` steps (BNTT, TEBN, TAB: per-step statistics or parameters)."""
        return getattr(self.module, "time_steps", None)

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        per_step = self.module.running_mean.ndim > len(self.module.feature_shape)
        if per_step and x.shape[0] != self.module.running_mean.shape[0]:
            raise ValueError(
                f"recalibrate_bn: {type(self.module).__name__} keeps statistics for each of "
                f"T={self.module.running_mean.shape[0]} steps but was called on {x.shape[0]} step(s) (shape "
                f"{tuple(x.shape)}); re-calibrate it with multi-step forwards over all T steps"
            )
        return self.module.reduce_dims(x, over_time=not per_step)

    def step_reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        return self.module.reduce_dims(x, over_time=True)

    def running_at(self, step: int) -> tuple[Tensor, Tensor]:
        """Row ``step`` of per-step statistics (BNTT, TEBN, TAB), the shared statistics otherwise."""
        if self.running_mean.ndim > len(self.module.feature_shape):
            return self.running_mean[step], self.running_var[step]
        return self.running_mean, self.running_var

    def statistics(self, moments: PooledMoments, unbiased: bool) -> tuple[Tensor, Tensor]:
        """The pooled statistics, or, for a layer that :attr:`~spikenorm.norm.TimeMajorNorm.accumulates_over_time`,
        those of steps ``0..t`` merged from the per-step moments (``moments.count`` samples per step)."""
        if not self.module.accumulates_over_time:
            return super().statistics(moments, unbiased)
        mean, var = accumulate_over_steps(moments.mean, moments.variance(unbiased=False))
        return mean, unbiased_accumulated(var, moments.count) if unbiased else var

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return self.module.affine_transform(self.module.normalize(x, mean, var))


class _TorchBatchNorm(StatisticsLayer):
    """A torch ``_BatchNorm``: channels on axis 1 of ``[N, C, ...]``, or on axis 2 of ``[T, B, C, ...]`` for
    SpikingJelly's multi-step layers (``step_mode == "m"``: ``BatchNorm*d``, ``TemporalEffectiveBatchNorm*d``)."""

    @property
    def time_major(self) -> bool:
        return getattr(self.module, "step_mode", "s") == "m"

    def reduce_dims(self, x: Tensor) -> tuple[int, ...]:
        channels = 2 if self.time_major else 1
        return tuple(d for d in range(x.ndim) if d != channels)

    def normalized(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """The layer's own (class) forward in eval mode with ``mean, var`` in its running buffers for the call
        (restored after it), so a subclass that does more than normalise hands on what it would: SpikingJelly's
        TEBN multiplies step ``t`` by its learned ``scale[t]``."""
        saved = self.running_mean.clone(), self.running_var.clone()
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)
        try:
            return type(self.module).forward(self.module, x)
        finally:
            self.running_mean.copy_(saved[0])
            self.running_var.copy_(saved[1])


def statistics_layers(model: nn.Module, time_steps: int | None = None) -> dict[str, StatisticsLayer]:
    """Every layer of ``model`` with running statistics to re-calibrate, by qualified name (``time_steps``: ``T`` of
    the model's multi-step forward, when known; see :class:`StatisticsLayer`)."""
    layers: dict[str, StatisticsLayer] = {}
    for name, module in model.named_modules():
        if isinstance(module, TimeMajorNorm) and hasattr(module, "running_mean"):
            layers[name] = _SpikenormNorm(module, name, time_steps)
        elif isinstance(module, _BatchNorm) and module.running_mean is not None:
            layers[name] = _TorchBatchNorm(module, name, time_steps)
    return layers
