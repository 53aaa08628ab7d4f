"""SKATR's config sections: ``lightcone`` (21cmFAST generator and data set), ``jepa`` (pretraining)
and ``skatr`` (summaries, heads, downstream tasks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class LightConeConfig:
    """21cmFAST light cones for SKATR: brightness temperature in mK, lengths in comoving Mpc.

    Generation (``python -m halotrans lightcones``): ``n`` accepted light cones are written to
    ``out``, drawn from seeds ``seed, seed+1, ...`` (the seed fixes both the parameter draw and
    the initial conditions); at most ``max_attempts`` seeds are tried (None: 10·n). A light cone
    is rejected (and recorded) when its Thomson optical depth exceeds ``tau_max`` or its neutral
    fraction at ``z_min`` exceeds ``x_hi_max``. Priors are uniform in the listed coordinates:
    m_WDM [keV], Ω_m, E0 [eV] (X-ray threshold energy), log10 L_X [erg/s per M☉/yr],
    log10 T_vir [K], ζ (ionising efficiency). ``wdm`` true applies the m_WDM transfer-function
    cutoff to CLASS tables (CLASS computed up to ``k_max_class`` [1/Mpc]); false is the
    five-parameter mode (EH transfer function, m_WDM neither sampled nor used).

    Grid: boxes of ``box_len`` Mpc with ``hii_dim``³ cells (ICs on ``dim``³), redshift nodes
    log-spaced in (1+z) by ``zprime_step_factor`` from ``z_min`` up to max(``z_max``, 35); the
    light cone has ``n_los`` slices from ``z_min`` to ``z_max`` equally spaced in comoving
    distance of the fiducial (Planck18) cosmology, so every light cone covers the same redshifts
    (the same observed frequencies) whatever its Ω_m. ``spin_temperature`` switches on
    spin-temperature fluctuations (USE_TS_FLUCT); ``r_bubble_max`` [Mpc] is the largest ionised
    bubble (at most box_len/3). ``downsample`` block-averages the light cone by that factor on
    every axis before it is stored (high-res mode: 140³ cells, 2350 slices, factor 5 → 28×28×470).
    ``workers`` processes run one light cone each (one thread each).

    Loading (:class:`halotrans.skatr.dataset.LightConeDataset`): ``split`` fractions
    (train, val, test) of the accepted light cones, shuffled with ``split_seed``; the line of
    sight is cropped (``los_fit: crop``, drops the highest-redshift slices) or zero-padded
    (``pad``) to a multiple of ``los_multiple`` slices; thermal noise of rms ``noise_mk`` [mK] at
    ``noise_z_ref``, scaled with the system temperature T_rcv + T_sky(ν) (``noise_receiver_k``
    [K]) and drawn in uv on the baselines up to ``noise_max_baseline_m`` [m] (None: all but the
    unmeasurable k⊥ = 0 mode); 0 = clean.

    Screen (:mod:`halotrans.skatr.screen`, off when ``screen_sigmas`` is None): once
    ``screen_min_fit`` light cones of the data set are computed, a seed whose τ predicted from its
    parameters lies ``screen_sigmas`` cross-validated σ above ``tau_max`` is recorded as rejected
    (``screened``) without being simulated. Neither changes what a simulated seed produces.
    """

    out: str = "data/lightcones.h5"
    n: int = 16
    seed: int = 0
    max_attempts: int | None = None
    workers: int = 2
    # grid and 21cmFAST settings
    hii_dim: int = 28
    dim: int = 84
    box_len: float = 200.0
    z_min: float = 5.0
    z_max: float = 35.0
    n_los: int = 470
    zprime_step_factor: float = 1.02
    spin_temperature: bool = True
    r_bubble_max: float = 15.0
    downsample: int = 1
    wdm: bool = True
    k_max_class: float = 10.0
    # priors of the six SKATR parameters (uniform in these coordinates)
    prior_m_wdm: tuple[float, float] = (0.3, 10.0)
    prior_omega_m: tuple[float, float] = (0.2, 0.4)
    prior_e0: tuple[float, float] = (100.0, 1500.0)
    prior_log10_lx: tuple[float, float] = (38.0, 42.0)
    prior_log10_tvir: tuple[float, float] = (4.0, 5.3)
    prior_zeta: tuple[float, float] = (10.0, 250.0)
    # acceptance
    tau_max: float = 0.089
    x_hi_max: float = 0.1
    # loading
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    los_multiple: int = 10
    los_fit: Literal["crop", "pad"] = "crop"
    noise_mk: float = 0.0
    noise_z_ref: float = 8.0
    noise_receiver_k: float = 100.0
    noise_max_baseline_m: float | None = None
    # τ screen
    screen_sigmas: float | None = None
    screen_min_fit: int = 200

    def __post_init__(self) -> None:
        if self.n < 1 or self.workers < 1 or self.downsample < 1:
            raise ValueError("n, workers and downsample must be >= 1")
        if self.max_attempts is not None and self.max_attempts < self.n:
            raise ValueError(f"max_attempts ({self.max_attempts}) must be >= n ({self.n})")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.hii_dim < 2 or self.dim < self.hii_dim:
            raise ValueError(f"need 2 <= hii_dim <= dim, got hii_dim={self.hii_dim}, dim={self.dim}")
        if self.hii_dim % self.downsample or self.n_los % self.downsample:
            raise ValueError(
                f"downsample={self.downsample} must divide hii_dim={self.hii_dim} and n_los={self.n_los}"
            )
        if not 0 < self.z_min < self.z_max:
            raise ValueError(f"need 0 < z_min < z_max, got {self.z_min}, {self.z_max}")
        if self.n_los < 2 or self.zprime_step_factor <= 1.0 or self.k_max_class <= 0:
            raise ValueError("n_los must be >= 2, zprime_step_factor > 1 and k_max_class > 0 (1/Mpc)")
        if not 0 < self.r_bubble_max <= self.box_len / 3:
            raise ValueError(
                f"r_bubble_max must be in (0, box_len/3 = {self.box_len / 3:g}] Mpc "
                f"(21cmFAST 4.1.1 refuses larger), got {self.r_bubble_max}"
            )
        for name in ("m_wdm", "omega_m", "e0", "log10_lx", "log10_tvir", "zeta"):
            lo, hi = getattr(self, f"prior_{name}")
            if lo > hi:
                raise ValueError(f"prior_{name}: lower bound {lo} above upper bound {hi}")
        if self.prior_m_wdm[0] <= 0 or self.prior_omega_m[0] <= 0.05 or self.prior_e0[0] < 100:
            raise ValueError("priors need m_wdm > 0 keV, omega_m > Omega_b and e0 >= 100 eV")
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) > 1 + 1e-9:
            raise ValueError(f"split must be three fractions >= 0 summing to <= 1, got {list(self.split)}")
        if self.los_multiple < 1:
            raise ValueError(f"los_multiple must be >= 1, got {self.los_multiple}")
        if self.noise_mk < 0 or self.noise_receiver_k < 0:
            raise ValueError("noise_mk and noise_receiver_k must be >= 0")
        if self.noise_max_baseline_m is not None and self.noise_max_baseline_m <= 0:
            raise ValueError(f"noise_max_baseline_m must be positive (m), got {self.noise_max_baseline_m}")
        if self.screen_sigmas is not None and self.screen_sigmas <= 0:
            raise ValueError(f"screen_sigmas must be > 0 (or null: no screen), got {self.screen_sigmas}")
        if self.screen_min_fit < 102:
            raise ValueError(f"screen_min_fit must be >= 102 (3 light cones per coefficient of the τ fit), "
                             f"got {self.screen_min_fit}")


@dataclass
class JEPAConfig:
    """JEPA pretraining of the light-cone ViT (SKATR): predictor, masks, target EMA and loss.

    Predictor: ``predictor_dim`` features, ``predictor_depth`` pre-norm blocks of
    ``predictor_heads`` heads and ``predictor_mlp_dim`` MLP features, fixed Fourier positions.

    Masks (:mod:`halotrans.skatr.masks`), on the patch grid (g0, g1, g2), axis 2 = line of sight:
    ``mask_targets`` target blocks per light cone, each covering a fraction in ``target_scale`` of
    the transverse patch grid (aspect ratio g0:g1 in ``aspect``) and a fraction in ``target_los``
    of the line of sight ((1, 1) = tubes through the whole light cone, as SKATR). The context is
    one block covering a fraction in ``context_scale`` of the grid (full line of sight), minus
    every target token; block sizes are drawn once per batch, positions per light cone.

    ``mask_scheme``: ``ijepa`` is the scheme above (one shared context, all targets in one predictor
    pass); ``skatr`` is SKATR's (Ore, Heneka & Plehn 2024; :func:`~halotrans.skatr.masks.sample_skatr_masks`):
    ``mask_targets`` blocks alternating long (a fraction in ``long_scale`` of the transverse patch
    grid, SKATR 0.6-0.8) and short (``short_scale``, SKATR 0.1-0.2), of ``target_los`` of the line
    of sight, each with its own context = its complement, one context-encoder and predictor pass
    per block (``target_scale`` and ``context_scale`` are unused).

    Target encoder: exponential moving average of the context encoder, momentum rising linearly
    from ``ema_start`` to ``ema_end`` over ``train.steps`` (1 = frozen target). Loss ``l1`` or
    ``smooth_l1`` between predictions and layer-normed target tokens (averaged over the blocks).
    """

    predictor_dim: int = 48
    predictor_depth: int = 4
    predictor_heads: int = 4
    predictor_mlp_dim: int = 96
    mask_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_los: tuple[float, float] = (1.0, 1.0)
    aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    ema_start: float = 0.996
    ema_end: float = 1.0
    loss: Literal["l1", "smooth_l1"] = "l1"
    mask_scheme: Literal["ijepa", "skatr"] = "ijepa"
    long_scale: tuple[float, float] = (0.6, 0.8)
    short_scale: tuple[float, float] = (0.1, 0.2)

    def __post_init__(self) -> None:
        if min(self.predictor_dim, self.predictor_depth, self.predictor_heads, self.predictor_mlp_dim) < 1:
            raise ValueError("predictor_dim, predictor_depth, predictor_heads and predictor_mlp_dim must be >= 1")
        if self.predictor_dim % self.predictor_heads or self.predictor_dim < 6:
            raise ValueError(f"predictor_dim ({self.predictor_dim}) must be >= 6 and divisible by "
                             f"predictor_heads ({self.predictor_heads})")
        if self.mask_targets < 1:
            raise ValueError(f"mask_targets must be >= 1, got {self.mask_targets}")
        for name in ("target_scale", "target_los", "context_scale", "long_scale", "short_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be a range 0 < lo <= hi <= 1, got {[lo, hi]}")
        if not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"aspect must be a range 0 < lo <= hi, got {list(self.aspect)}")
        if not 0 <= self.ema_start <= self.ema_end <= 1:
            raise ValueError(f"need 0 <= ema_start <= ema_end <= 1, got {self.ema_start}, {self.ema_end}")


@dataclass
class SkatrConfig:
    """SKATR tasks on light cones (``jepa``, ``regress``, ``npe``) and their summaries.

    ``batch_size``: light cones (or summaries) per micro-batch and rank, every SKATR task.
    ``summary``: what ``regress``/``npe`` see: ``frozen`` = the cached mean-pooled summaries of
    the encoder of ``encoder_run`` (a ``jepa`` run, or a ``regress`` run with ``summary: scratch``,
    whose ViT then is the regression-pretrained summary), or ``scratch`` = a ViT (``model``
    section) trained end to end with the head. ``encoder_weights``: which encoder of a JEPA run
    summarises (``target`` = the EMA encoder, I-JEPA's choice, or ``context``).
    ``summary_cache``: the summaries file (default ``<encoder_run>/summaries/<data set>.h5``); it
    records the encoder checkpoint and the data set it was made from and is recomputed when
    either changed. ``noise_seed``: thermal-noise seed of cached summaries, validation and test
    (fixed noise per light cone); training light cones get fresh noise every step.
    ``train_fraction``: use this fraction of the training split (nested subsets; data-efficiency curves).
    Heads: MLP of ``head_depth`` hidden layers of ``head_hidden`` features (regression, sigmoid
    output in the prior-normalised [0, 1] units; ``head_input``: how a frozen summary enters it,
    ``standardize`` per feature or ``whiten`` = PCA whitening fitted on the training summaries, for
    anisotropic JEPA summaries and training sets much larger than the summary; choose it on
    validation; the scratch ViT's learned features enter as they are), and a
    rational-quadratic spline autoregressive flow of ``flow_transforms`` layers (``flow_hidden``
    features, ``flow_bins`` bins) on the logit of the normalised parameters, conditioned on an MLP
    embedding of the summary.
    ``posterior_samples``: samples per test light cone in ``skatr report``.

    Unlabelled pretraining pool: ``pretrain_data`` names another light-cone file (same grid and
    loading settings, e.g. ``python -m halotrans lightcones -c skatr/lightcones_pool.yaml``) whose
    light cones ALL join JEPA's training set; their parameters are never read. With
    ``pretrain_labelled`` the training split of ``lightcone.out`` joins too (its parameters unread as
    well); validation stays on the labelled validation split.

    ``symmetries``: 1, or 8 = the transverse rotations and reflections of each light cone
    (:func:`~halotrans.skatr.data.transverse_symmetry`; SKATR summarises all 8). Frozen summaries
    are cached for each; regression heads train on a random one per light cone and step (the
    scratch ViT on a randomly transformed light cone), and validation and test average the
    predictions over all of them; the npe task conditions on the average over them.
    ``loss``: ``mse`` or ``l1`` (SKATR) of the regression head in the prior-normalised units.

    NPE conditioning (``npe_condition``): ``summary`` = the (symmetry-averaged) summary itself;
    ``pca`` = its leading ``npe_components`` principal components (fitted on the training
    light cones); ``regression`` = the outputs of the finished frozen-summary regression run
    ``compress_run`` (its head, averaged over the symmetries: P numbers in [0, 1]). The
    compression is saved inside the npe model, so evaluation applies the same one.

    Cross-fitting (a head's outputs on its own training light cones are tighter than on new ones,
    so a flow trained on them is over-confident): ``cv_folds`` = K > 1 trains on the training pool
    without fold ``cv_fold`` of K (a fixed partition, :func:`~halotrans.skatr.data.cv_fold_ids`);
    an npe run with ``compress_fold_runs`` (the K such regress runs) trains its flow on the
    out-of-fold head outputs of each training light cone and validates and tests through the
    head of ``compress_run`` (trained on the whole pool).
    """

    batch_size: int = 16
    summary: Literal["frozen", "scratch"] = "frozen"
    encoder_run: str = ""
    encoder_weights: Literal["target", "context"] = "target"
    summary_cache: str = ""
    noise_seed: int = 0
    train_fraction: float = 1.0
    head_hidden: int = 256
    head_depth: int = 2
    head_input: Literal["standardize", "whiten"] = "standardize"
    flow_transforms: int = 4
    flow_hidden: int = 64
    flow_bins: int = 8
    posterior_samples: int = 1000
    pretrain_data: str = ""
    pretrain_labelled: bool = True
    symmetries: int = 1
    loss: Literal["mse", "l1"] = "mse"
    npe_condition: Literal["summary", "pca", "regression"] = "summary"
    npe_components: int = 8
    compress_run: str = ""
    cv_folds: int = 0
    cv_fold: int = 0
    compress_fold_runs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if min(self.batch_size, self.head_hidden, self.flow_transforms, self.flow_hidden, self.flow_bins,
               self.posterior_samples) < 1 or self.head_depth < 0 or self.noise_seed < 0:
            raise ValueError("batch_size, head_hidden, flow_transforms, flow_hidden, flow_bins and "
                             "posterior_samples must be >= 1; head_depth and noise_seed >= 0")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.symmetries not in (1, 8):
            raise ValueError(f"symmetries must be 1 or 8 (the transverse rotations and reflections), "
                             f"got {self.symmetries}")
        if self.npe_components < 1:
            raise ValueError(f"npe_components must be >= 1, got {self.npe_components}")
        if self.npe_condition == "regression" and not self.compress_run:
            raise ValueError("npe_condition = regression needs compress_run (a finished frozen-summary regress run)")
        if self.cv_folds == 1 or self.cv_folds < 0 or (self.cv_folds and not 0 <= self.cv_fold < self.cv_folds):
            raise ValueError(f"cv_folds must be 0 (off) or >= 2 with 0 <= cv_fold < cv_folds, got "
                             f"cv_folds={self.cv_folds}, cv_fold={self.cv_fold}")
        if self.compress_fold_runs and (self.npe_condition != "regression" or len(self.compress_fold_runs) < 2):
            raise ValueError("compress_fold_runs: the regress runs of >= 2 folds, for npe_condition = regression")
