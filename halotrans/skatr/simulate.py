"""One 21cmFAST light cone: parameters → brightness temperature (mK), τ, x_HI history, verdict.

Pinned to 21cmFAST 4.1.1 (checked when this module is imported): the v4 API and its defaults
differ a lot from v3, and a silently different version would make a different data set.

The model is the constant-ionising-efficiency template (``const-zeta``) with spin-temperature
fluctuations, and with ``M_MIN_in_Mass=False`` so that the minimum source mass follows the virial
temperature T_vir (otherwise 4.1.1 ignores ``ION_Tvir_MIN``); X-ray sources use the same T_vir.
Nothing is cached or written by 21cmFAST (``cache=None, write=False``).

    result = simulate_light_cone(cfg, seed=3)
    result["brightness_temp"].shape   # (hii_dim, hii_dim, n_los) / downsample, float32 mK
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import warnings
from typing import Any

import numpy as np

from halotrans.skatr.config import LightConeConfig
from halotrans.skatr.priors import sample_params, wdm_transfer_suppression

REQUIRED_21CMFAST = "4.1.1"
#: 21cmFAST's default start of the X-ray heating integration (SimulationOptions.Z_HEAT_MAX)
Z_HEAT_MAX = 35.0


def _import_21cmfast():
    try:
        import py21cmfast
    except ImportError as e:
        raise ImportError(
            f"light cones need 21cmFAST=={REQUIRED_21CMFAST} (pip install 21cmFAST=={REQUIRED_21CMFAST}; "
            f"it builds with libfftw3-dev and libgsl-dev): {e}"
        ) from None
    if py21cmfast.__version__ != REQUIRED_21CMFAST:
        raise ImportError(
            f"light cones are pinned to 21cmFAST {REQUIRED_21CMFAST} (v4 API and defaults), found "
            f"{py21cmfast.__version__}: pip install 21cmFAST=={REQUIRED_21CMFAST}"
        )
    return py21cmfast


p21c = _import_21cmfast()

#: harmless 21cmFAST warnings for this set-up (coarse boxes, the EPS normalisation of const-zeta)
_QUIET = (
    "Resolution is likely too low",
    "Your model (either SOURCE_MODEL=='CONST-ION-EFF'",
    "Trying to purge array",
)


@contextlib.contextmanager
def _quiet_21cmfast():
    with warnings.catch_warnings():
        for msg in _QUIET:
            warnings.filterwarnings("ignore", message=re.escape(msg))
        yield


def fiducial_cosmology():
    """21cmFAST's default (Planck18) astropy cosmology: it fixes the light-cone redshift grid."""
    return p21c.CosmoParams().cosmo


def los_grid(cfg: LightConeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Redshift and fiducial comoving distance [Mpc] of the ``n_los`` light-cone slices, (n_los,) each.

    Slices are equally spaced in fiducial comoving distance from ``z_min`` (index 0) to ``z_max``.
    """
    cosmo = fiducial_cosmology()
    d = np.linspace(cosmo.comoving_distance(cfg.z_min).value, cosmo.comoving_distance(cfg.z_max).value, cfg.n_los)
    zgrid = np.linspace(cfg.z_min, cfg.z_max, 4000)
    z = np.interp(d, cosmo.comoving_distance(zgrid).value, zgrid)
    z[0], z[-1] = cfg.z_min, cfg.z_max
    return z, d


def node_redshifts(cfg: LightConeConfig) -> np.ndarray:
    """Redshifts of the coeval boxes, descending, from max(z_max, 35) down to exactly ``z_min``."""
    return np.array(p21c.get_logspaced_redshifts(
        min_redshift=cfg.z_min, z_step_factor=cfg.zprime_step_factor, max_redshift=max(cfg.z_max, Z_HEAT_MAX)
    ))


def wdm_cosmo_tables(cosmo_params, m_wdm: float, k_max: float):
    """21cmFAST transfer tables from CLASS (z=0, CDM+baryons) times the WDM cutoff of ``m_wdm`` keV.

    CLASS is run here rather than through 21cmFAST's default path, which asks CLASS for transfer
    functions at z=1087 and fails for Ω_m below ~0.3 (z_rec < 1087). The amplitude comes from
    SIGMA_8 (21cmFAST normalises the table itself), so CLASS gets a fixed A_s and no shooting.
    Above ``k_max`` [1/Mpc] the table follows 21cmFAST's Eisenstein–Hu extrapolation. The
    relative-velocity table is zero: it is used only with USE_RELATIVE_VELOCITIES, which is off.
    """
    from astropy import units
    from py21cmfast.wrapper.classy_interface import get_transfer_function, k_transfer, run_classy
    from py21cmfast.wrapper.inputs import CosmoTables, Table1D

    classy = run_classy(
        h=cosmo_params.hlittle, Omega_cdm=cosmo_params.OMm - cosmo_params.OMb, Omega_b=cosmo_params.OMb,
        n_s=cosmo_params.POWER_INDEX, A_s=2.1e-9, output="mTk", P_k_max=k_max / units.Mpc, z_pk=0.0,
    )
    k = np.concatenate(([0.0], k_transfer.to_value("1/Mpc")))
    t_cdm = np.concatenate(([0.0], np.asarray(get_transfer_function(classy, kind="d_m", z=0.0))))
    classy.struct_cleanup()
    omega_wdm_h2 = (cosmo_params.OMm - cosmo_params.OMb) * cosmo_params.hlittle**2
    t_wdm = t_cdm * wdm_transfer_suppression(k, m_wdm, omega_wdm_h2)
    return CosmoTables(
        transfer_density=Table1D(size=k.size, x_values=k, y_values=t_wdm),
        transfer_vcb=Table1D(size=k.size, x_values=k, y_values=np.zeros_like(k)),
        ps_norm=cosmo_params.SIGMA_8, USE_SIGMA_8=True,
    )


def build_inputs(cfg: LightConeConfig, seed: int, params: np.ndarray):
    """21cmFAST ``InputParameters`` for one light cone (with CLASS + WDM tables when ``cfg.wdm``)."""
    from py21cmfast._templates import create_params_from_template

    m_wdm, omega_m, e0, log10_lx, log10_tvir, zeta = (float(v) for v in params)
    kw: dict[str, Any] = dict(
        HII_DIM=cfg.hii_dim, DIM=cfg.dim, BOX_LEN=cfg.box_len,
        ZPRIME_STEP_FACTOR=cfg.zprime_step_factor, Z_HEAT_MAX=max(cfg.z_max, Z_HEAT_MAX),
        USE_TS_FLUCT=cfg.spin_temperature, M_MIN_in_Mass=False, R_BUBBLE_MAX=cfg.r_bubble_max,
        OMm=omega_m, NU_X_THRESH=e0, L_X=log10_lx, ION_Tvir_MIN=log10_tvir, X_RAY_Tvir_MIN=log10_tvir,
        HII_EFF_FACTOR=zeta, POWER_SPECTRUM="CLASS" if cfg.wdm else "EH",
    )
    with _quiet_21cmfast():
        structs = create_params_from_template("const-zeta", **kw)
        structs.pop("cosmo_tables")
        if cfg.wdm:
            structs["cosmo_tables"] = wdm_cosmo_tables(structs["cosmo_params"], m_wdm, cfg.k_max_class)
        return p21c.InputParameters(random_seed=seed, node_redshifts=tuple(node_redshifts(cfg)), **structs)


def inputs_json(inputs) -> str:
    """JSON of the 21cmFAST input structs (every setting of the run, transfer tables left out)."""
    structs = inputs.asdict(only_structs=True)
    structs.pop("cosmo_tables", None)
    return json.dumps(structs, default=str)


def block_average(a: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``³ blocks of an (X, Y, Z) array (each axis divisible by ``factor``)."""
    if factor == 1:
        return a
    x, y, z = (s // factor for s in a.shape)
    return a.reshape(x, factor, y, factor, z, factor).mean(axis=(1, 3, 5))


def verdict(cfg: LightConeConfig, tau: float, x_hi_zmin: float) -> str:
    """'' if accepted, else why not, e.g. ``"tau 0.0951 > 0.089; x_HI(z=5) 0.1640 > 0.1"``."""
    reasons = []
    if not tau <= cfg.tau_max:
        reasons.append(f"tau {tau:.4f} > {cfg.tau_max:g}")
    if not x_hi_zmin <= cfg.x_hi_max:
        reasons.append(f"x_HI(z={cfg.z_min:g}) {x_hi_zmin:.4f} > {cfg.x_hi_max:g}")
    return "; ".join(reasons)


def simulate_light_cone(cfg: LightConeConfig, seed: int, params: np.ndarray | None = None) -> dict[str, Any]:
    """Run 21cmFAST for light cone ``seed`` (parameters drawn from the seed unless given).

    Returns ``seed``, ``params`` (6,), ``brightness_temp`` (X, Y, Z) float32 mK, block-averaged by
    ``cfg.downsample``, LoS axis last with index 0 at ``z_min``, ``tau``, ``x_hi`` and
    ``mean_brightness_temp`` (K,) at the ascending node redshifts, ``x_hi_zmin``, ``reason`` ('' =
    accepted) and ``seconds`` (wall clock).
    """
    t0 = time.perf_counter()
    params = sample_params(cfg, seed) if params is None else np.asarray(params, dtype=np.float64)
    inputs = build_inputs(cfg, seed, params)
    cosmo = inputs.cosmo_params.cosmo
    z_los, _ = los_grid(cfg)
    lightconer = p21c.RectilinearLightconer(
        lc_distances=cosmo.comoving_distance(z_los), cosmo=cosmo, quantities=("brightness_temp",)
    )
    with _quiet_21cmfast():
        lc = p21c.run_lightcone(lightconer=lightconer, inputs=inputs, cache=None, write=False)
    z_nodes = np.asarray(lc.node_redshifts)[::-1]
    x_hi = np.asarray(lc.global_quantities["neutral_fraction"], dtype=np.float64)[::-1]
    mean_tb = np.asarray(lc.global_quantities["brightness_temp"], dtype=np.float64)[::-1]
    tau = float(p21c.compute_tau(redshifts=z_nodes, global_xHI=x_hi, inputs=inputs))
    tb = block_average(np.asarray(lc.lightcones["brightness_temp"], dtype=np.float32), cfg.downsample)
    return {
        "seed": int(seed),
        "params": params,
        "brightness_temp": tb.astype(np.float32),
        "tau": tau,
        "x_hi": x_hi,
        "mean_brightness_temp": mean_tb,
        "x_hi_zmin": float(x_hi[0]),
        "reason": verdict(cfg, tau, float(x_hi[0])),
        "inputs": inputs_json(inputs),
        "seconds": time.perf_counter() - t0,
    }
