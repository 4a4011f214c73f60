from setuptools import find_packages, setup


def read_version():
    scope = {}
    with open('spanet_mm/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='spanet_mm',
    version=read_version(),
    description='SPANet (ICCV 2023) backbone for the OpenMMLab 2.x toolboxes',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['spanet_mm', 'spanet_mm.*']),
    python_requires='>=3.8',
    # The tested stack is pinned in requirements/runtime.txt; these are the loose bounds the code
    # itself needs (mmdet/mmseg assert mmcv < 2.2.0; mmengine 0.x).
    install_requires=['torch>=2.0', 'mmengine>=0.10,<1.0', 'mmcv>=2.0.0,<2.2.0'],
    extras_require={
        'det': ['mmdet>=3.0,<4.0', 'pycocotools'],
        'seg': ['mmsegmentation>=1.0,<2.0', 'ftfy', 'regex'],
        'cls': ['mmpretrain>=1.0,<2.0'],
    },
    license='Apache License 2.0',
)
