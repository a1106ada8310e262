"""Plain, picklable configuration dataclasses of the PyTorch backend (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ptycho.config.config import GeneratorFields, LRScheduleFields, ObjectProbeFields, OptimizerFields

__all__ = [
    'DataConfig',
    'DatagenConfig',
    'InferenceConfig',
    'ModelConfig',
    'TrainingConfig',
]


@dataclass
class DataConfig:
    """Data loading, grouping and normalisation settings."""

    nphotons: float = 1e5
    N: int = 64
    C: int = 4
    K: int = 6
    K_quadrant: int = 30
    n_subsample: int = 7
    subsample_seed: int | None = None
    grid_size: tuple[int, int] = (2, 2)
    neighbor_function: Literal['Nearest', 'Min_dist', '4_quadrant'] = 'Nearest'
    min_neighbor_distance: float = 0.0
    max_neighbor_distance: float = 3.0
    scan_pattern: Literal['Isotropic', 'Rectangular'] = 'Isotropic'
    normalize: Literal['Group', 'Batch'] = 'Batch'
    probe_scale: float = 4.0
    probe_normalize: bool = True
    probe_ramp_removal: bool = False
    data_scaling: Literal['Parseval', 'Max'] = 'Parseval'
    phase_subtraction: bool = True
    x_bounds: tuple[float, float] = (0.1, 0.9)
    y_bounds: tuple[float, float] = (0.1, 0.9)


@dataclass
class ModelConfig(ObjectProbeFields, GeneratorFields):
    """Network architecture, forward model and loss settings (PtychoPINN's fields and defaults).

    ``probe_mask`` is None, a bool, or a mask tensor/array and ``probe_mask_tensor`` a mask
    tensor/array or None; they are typed loosely so this module never needs torch.
    ``generator_input``, ``object_estimate_steps``, ``generator_output`` and ``truth_loss_weight``
    are this package's (specs/model.md sections 5 and 6): by default the generator reads the object
    after two error-reduction steps and outputs its correction (``object_estimate_steps`` is an
    integer from 1 to 100; more is refused as a damaged or mistyped setting);
    ``generator_input='diffraction'`` with ``generator_output='object'`` is PtychoPINN's generator. ``base_filters`` (16) is the
    U-Net's first width at ``n_filters_scale=1``; PtychoPINN's is 32.
    The generator (``architecture``, ``fno_*``, ...) and object/probe fields (``object_big``,
    ``probe_mask_sigma``, ...) are inherited, keyword-only, from ``ptycho.config.config``'s
    ``GeneratorFields`` and ``ObjectProbeFields``, which its ModelConfig shares.
    """

    mode: Literal['Unsupervised', 'Supervised'] = 'Unsupervised'
    hybrid_skip_connections: bool = False
    hybrid_downsample_steps: int = 2
    hybrid_downsample_op: Literal['stride_conv', 'avgpool_conv', 'blurpool_conv'] = 'stride_conv'
    hybrid_encoder_conv_hidden_scale: float = 1.0
    hybrid_encoder_spectral_hidden_scale: float = 1.0
    hybrid_encoder_conv_hidden_channels: int | None = None
    hybrid_encoder_spectral_hidden_channels: int | None = None
    hybrid_resnet_blocks: int = 6
    hybrid_skip_style: Literal['add', 'concat', 'gated_add'] = 'add'
    spectral_bottleneck_blocks: int = 6
    spectral_bottleneck_modes: int = 12
    spectral_bottleneck_share_weights: bool = True
    spectral_bottleneck_gate_init: float = 0.1
    spectral_bottleneck_gate_mode: Literal['shared', 'per_block'] = 'shared'
    generator_input: Literal['object_estimate', 'diffraction'] = 'object_estimate'
    object_estimate_steps: int = 2
    generator_output: Literal['correction', 'object'] = 'correction'
    truth_loss_weight: float = 0.0
    base_filters: int = 16
    intensity_scale_trainable: bool = False
    intensity_scale: float = 10000.0
    max_position_jitter: int = 10
    num_datasets: int = 1
    C_model: int = 4
    n_filters_scale: int = 2
    amp_activation: str = 'silu'
    batch_norm: bool = False
    probe_mask: Any = False
    probe_mask_tensor: Any = None
    edge_pad: int = 10
    decoder_last_c_outer_fraction: float = 0.125
    decoder_last_amp_channels: int = 1
    use_shared_decoder: bool = False
    eca_encoder: bool = False
    cbam_encoder: bool = True
    cbam_bottleneck: bool = False
    cbam_decoder: bool = False
    eca_decoder: bool = False
    spatial_decoder: bool = False
    decoder_spatial_kernel: int = 7
    offset: int = 6
    C_forward: int = 4
    loss_function: Literal['MAE', 'Poisson'] = 'Poisson'
    amp_loss: Literal['Total_Variation', 'Mean_Deviation'] | None = None
    phase_loss: Literal['Total_Variation', 'Mean_Deviation'] | None = None
    amp_loss_coeff: float = 1.0
    phase_loss_coeff: float = 1.0
    probe_reference_coeff: float = 0.0
    amplitude_variance_loss: bool = False
    amplitude_variance_coeff: float = 0.01


@dataclass
class TrainingConfig(LRScheduleFields, OptimizerFields):
    """Training loop, hardware, scheduling and file-location settings.

    ``lr_warmup_epochs``/``lr_min_ratio`` are PtychoPINN main's names; ``warmup_epochs``/``min_lr_ratio``
    those of the branch Ptychodus 1.7.0 calls. Both are kept; the bridge uses a non-default
    ``lr_*`` value first, else the other. The optimizer and learning-rate schedule fields
    (``optimizer``, ``scheduler``, ``plateau_*``, ...) are inherited, keyword-only, from
    ``ptycho.config.config``'s ``OptimizerFields`` and ``LRScheduleFields``, which its TrainingConfig shares.
    """

    training_directories: list[str] = field(default_factory=list)
    nll: bool = True
    device: str = 'auto'
    strategy: str | None = 'ddp'
    n_devices: int = 1
    framework: Literal['Default', 'Lightning'] = 'Lightning'
    orchestrator: Literal['Mlflow', 'Lightning'] = 'Mlflow'
    learning_rate: float = 1e-3
    epochs: int = 50
    batch_size: int = 16
    epochs_fine_tune: int = 0
    fine_tune_gamma: float = 0.1
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.1
    num_workers: int = 4
    accum_steps: int = 1
    log_grad_norm: bool = False
    grad_norm_log_freq: int = 1
    stage_1_epochs: int = 0
    stage_2_epochs: int = 0
    stage_3_epochs: int = 0
    physics_weight_schedule: str = 'cosine'
    stage_3_lr_factor: float = 0.1
    experiment_name: str = 'Synthetic_Runs'
    notes: str = ''
    model_name: str = 'PtychoPINNv2'
    enable_staged_finetuning: bool = False
    finetune_stage1_epochs: int = 7
    finetune_stage2_epochs: int = 7
    finetune_stage3_epochs: int = 5
    finetune_stage1_lr_decoder: float = 0.1
    finetune_stage2_lr_encoder_top: float = 0.01
    finetune_stage2_lr_decoder: float = 0.05
    finetune_stage2_lr_phase_head: float = 0.1
    finetune_stage3_lr_encoder_bottom: float = 0.005
    finetune_stage3_lr_encoder_top: float = 0.01
    finetune_stage3_lr_decoder: float = 0.02
    finetune_stage3_lr_phase_head: float = 0.05
    finetune_skip_stage3: bool = True
    finetune_early_stop_patience: int = 3
    finetune_val_split: float = 0.05
    train_data_file: str | None = None
    test_data_file: str | None = None
    output_dir: str = 'training_outputs'
    n_groups: int | None = None


@dataclass
class InferenceConfig:
    """Reconstruction (stitching) settings."""

    middle_trim: int = 32
    batch_size: int = 1000
    experiment_number: int = 0
    patch_weighting: str = 'probe'
    pad_eval: bool = True
    window: int = 20
    log_patch_stats: bool = False
    patch_stats_limit: int | None = None


@dataclass
class DatagenConfig:
    """Synthetic data generation settings.

    ``ptycho_torch.datagen.datagen_recipes(config, seed)`` turns them into the training corpus of
    ``ptycho.corpus``: ``objects_per_probe`` scans per probe (the training probe families, or each
    ``.npy``/``.npz`` file of ``probe_paths``), ``diff_per_object`` points per scan, ``object_class``
    an object family (several separated by commas, or ``'mixed'``), ``image_size`` the side of the
    square object (the scan must fit in it), ``beamstop_diameter`` the zone-plate probes' central stop
    in pupil pixels (0 with ``probe_paths``). Values it cannot honour raise ``ValueError`` naming the field.
    """

    objects_per_probe: int = 4
    diff_per_object: int = 7000
    object_class: str = 'dead_leaves'
    image_size: tuple[int, int] = (250, 250)
    probe_paths: list[str] = field(default_factory=list)
    beamstop_diameter: int = 4
