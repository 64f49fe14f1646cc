"""CLIP-ViP configuration: CLIP's text and vision settings plus the video proxy layout."""

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, CLIPVisionConfig
from transformers.configuration_utils import PreTrainedConfig

ATTENTION_PATTERNS = ("proxy", "full")


def architecture_fields(values: dict, config_class: type[PreTrainedConfig]) -> dict:
    """The entries of `values` that are `config_class`'s own settings (not `PreTrainedConfig` bookkeeping)."""
    own = set(config_class.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    return {key: value for key, value in values.items() if key in own}


@strict
class ClipVipTextConfig(CLIPTextConfig):
    """CLIP's text transformer settings, unchanged (see `transformers.CLIPTextConfig`)."""

    model_type = "clip_vip_text_model"


@strict
class ClipVipVisionConfig(CLIPVisionConfig):
    r"""
    CLIP's vision transformer settings plus the video settings of CLIP-ViP.

    num_proxies (`int`, defaults to 3):
        Learned video proxy tokens placed after the class token (`M = 1 + num_proxies` front tokens).
    num_frames (`int`, defaults to 12):
        Length of the learned temporal table; inputs with another frame count interpolate it linearly.
    use_temporal_embedding (`bool`, defaults to `True`):
        Whether the temporal table is added to the patches of each frame.
    attention_pattern (`str`, defaults to `"proxy"`):
        `"proxy"`: patches see the front tokens and their own frame, front tokens see everything.
        `"full"`: every token sees every token (the paper's ablation).
    """

    model_type = "clip_vip_vision_model"

    num_proxies: int = 3
    num_frames: int = 12
    use_temporal_embedding: bool = True
    attention_pattern: str = "proxy"

    def validate_architecture(self):
        super().validate_architecture()
        if self.attention_pattern not in ATTENTION_PATTERNS:
            raise ValueError(f"attention_pattern must be one of {ATTENTION_PATTERNS}, got {self.attention_pattern!r}.")
        if self.num_proxies < 0 or self.num_frames < 1:
            raise ValueError(
                f"num_proxies must be >= 0 and num_frames >= 1, got {self.num_proxies} and {self.num_frames}."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}.")


@strict
class ClipVipConfig(PreTrainedConfig):
    r"""
    Configuration of [`ClipVipModel`]: a text config, a vision config and the shared projection.

    text_config (`dict` or `ClipVipTextConfig`, *optional*): the text transformer.
    vision_config (`dict` or `ClipVipVisionConfig`, *optional*): the video transformer.
    projection_dim (`int`, defaults to 512): width of the joint embedding space.
    logit_scale_init_value (`float`, defaults to 4.6): initial log temperature (ln 100, as the authors use).
    """

    model_type = "clip_vip"
    sub_configs = {"text_config": ClipVipTextConfig, "vision_config": ClipVipVisionConfig}

    text_config: dict | ClipVipTextConfig | None = None
    vision_config: dict | ClipVipVisionConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 4.6
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        if self.text_config is None:
            self.text_config = ClipVipTextConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = ClipVipTextConfig(**self.text_config)
        if self.vision_config is None:
            self.vision_config = ClipVipVisionConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = ClipVipVisionConfig(**self.vision_config)
        super().__post_init__(**kwargs)


ClipVipConfig.register_for_auto_class()

__all__ = ["ClipVipConfig", "ClipVipTextConfig", "ClipVipVisionConfig"]
