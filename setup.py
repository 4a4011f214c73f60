import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

REPO_ROOT = osp.dirname(osp.abspath(__file__))

#: What an installed package carries in ``spanet_mm/.mim/``, as the OpenMMLab toolboxes do:
#: ``mim search`` reads ``.mim/model-index.yml``, ``mim train``/``mim test`` run
#: ``.mim/tools/{train,test}.py`` and find configs under ``.mim``, and ``spanet_mm.hub`` registers
#: ``.mim/configs/classification/metafile.yml`` with mmpretrain's model hub.
MIM_FILES = ('model-index.yml', 'configs', 'tools')

#: Not packaged: byte code, and the two checkout scripts (tools/setup_env.sh creates this
#: repository's venv and links it as .venv; tools/demo.sh is `make demo`).
MIM_IGNORE = shutil.ignore_patterns('__pycache__', '*.pyc', 'setup_env.sh', 'demo.sh')


def read_version():
    scope = {}
    with open(osp.join(REPO_ROOT, 'spanet_mm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


class BuildPyWithMim(build_py):
    """``build_py`` that also builds ``spanet_mm/.mim``, like ``add_mim_extension`` in mmdet's
    and mmpretrain's ``setup.py``.

    - A wheel (``pip wheel .``, ``pip install .``) gets copies, written to the build directory
      only: building a wheel leaves the checkout as it is (upstream copies into the source
      package, which replaces an editable install's links with stale copies).
    - An editable install (``pip install -e .``) gets symbolic links in the source package (the
      one the editable install imports), so edited configs are seen at once; copies on Windows,
      where links need privileges (as upstream).
    """

    def run(self):
        super().run()  # does nothing in editable mode: the package is imported in place
        if self.editable_mode:
            self._make_mim(osp.join(REPO_ROOT, 'spanet_mm', '.mim'), link=os.name != 'nt')
        else:
            self._make_mim(osp.join(self.build_lib, 'spanet_mm', '.mim'), link=False)

    @staticmethod
    def _make_mim(mim_dir, link):
        os.makedirs(mim_dir, exist_ok=True)
        for name in MIM_FILES:
            src, dst = osp.join(REPO_ROOT, name), osp.join(mim_dir, name)
            if osp.islink(dst) or osp.isfile(dst):
                os.remove(dst)
            elif osp.isdir(dst):
                shutil.rmtree(dst)
            if link:
                # Relative, so that the links survive moving the checkout.
                os.symlink(osp.relpath(src, mim_dir), dst)
            elif osp.isdir(src):
                shutil.copytree(src, dst, ignore=MIM_IGNORE)
            else:
                shutil.copy2(src, dst)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        mim_dir = osp.join(self.build_lib, 'spanet_mm', '.mim')
        for root, _, files in os.walk(mim_dir):
            outputs += [osp.join(root, f) for f in files]
        return outputs


setup(
    name='spanet_mm',
    version=read_version(),
    description='SPANet (ICCV 2023) backbone for the OpenMMLab 2.x toolboxes',
    long_description=open(osp.join(REPO_ROOT, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['spanet_mm', 'spanet_mm.*']),
    cmdclass={'build_py': BuildPyWithMim},
    python_requires='>=3.8',
    # The tested stack is pinned in requirements/runtime.txt; these are the loose bounds the code
    # itself needs (mmdet/mmseg assert mmcv < 2.2.0; mmengine 0.x).
    install_requires=['torch>=2.5', 'mmengine>=0.10,<1.0', 'mmcv>=2.0.0,<2.2.0'],
    extras_require={
        'det': ['mmdet>=3.0,<4.0', 'pycocotools'],
        'seg': ['mmsegmentation>=1.0,<2.0', 'ftfy', 'regex'],
        'cls': ['mmpretrain>=1.0,<2.0'],
    },
    license='Apache License 2.0',
)
