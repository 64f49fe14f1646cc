from setuptools import setup

setup(
    name="clip-vip",
    version="0.1.0",
    description="CLIP-ViP (Xue et al., ICLR 2023) as a Hugging Face transformers model",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["modeling_clip_vip", "training"],
    package_data={"training": ["metrics/*/*.py"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "datasets>=4.0",
        "accelerate>=1.0",
        "evaluate>=0.4",
        "huggingface_hub>=1.0",
        "safetensors",
        "av>=14",
        "pillow",
        "numpy",
        "pyarrow",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest"], "index": ["faiss-cpu"]},
    entry_points={"console_scripts": ["clip-vip=training.cli:main"]},
)
