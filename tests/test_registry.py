"""`import spanet_mm` registers SPANet in each installed toolbox, each independently."""
import os
import subprocess
import sys
import textwrap

import pytest
from mmengine.registry import init_default_scope

import spanet_mm
from conftest import REPO_ROOT


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_built_from_each_scope(scope):
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(dict(type='SPANet', arch='s', init_cfg=None))
    assert isinstance(model, spanet_mm.SPANet)
    assert registry.get('SPANet') is spanet_mm.SPANet


def test_a_missing_toolbox_is_silent_and_a_missing_dependency_is_reported(
        tmp_path, monkeypatch, recwarn):
    """A toolbox that is not installed is skipped without a word (detection needs no mmseg);
    one that is installed but whose own import fails for a missing dependency
    (ModuleNotFoundError for another module) is reported, naming the module."""
    broken = tmp_path / 'spanet_fake_broken'
    broken.mkdir()
    (broken / '__init__.py').write_text(
        "raise ModuleNotFoundError(\"No module named 'some_dependency'\", "
        "name='some_dependency')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(spanet_mm.registry, 'TOOLBOX_REGISTRIES', {
        'spanet_fake_missing': 'spanet_fake_missing.registry',
        'spanet_fake_broken': 'spanet_fake_broken.registry'})
    monkeypatch.setattr(spanet_mm.registry, 'UNAVAILABLE_TOOLBOXES', {})
    assert list(spanet_mm.registry._toolbox_registries()) == []
    unavailable = spanet_mm.registry.UNAVAILABLE_TOOLBOXES
    assert unavailable['spanet_fake_missing'] == 'not installed'
    assert 'some_dependency' in unavailable['spanet_fake_broken']
    warned = [str(w.message) for w in recwarn if 'spanet_mm' in str(w.message)]
    assert len(warned) == 1, warned
    assert 'spanet_fake_broken is installed but could not be imported' in warned[0]
    assert 'some_dependency' in warned[0]


def run_with_broken(toolbox, error, build):
    """Imports spanet_mm with `toolbox` shadowed by a package that raises `error` on import."""
    fake_root = os.path.join(os.environ.get('TMPDIR', '/tmp'),
                             f'spanet_mm_fake_{toolbox}_{os.getpid()}')
    os.makedirs(os.path.join(fake_root, toolbox), exist_ok=True)
    with open(os.path.join(fake_root, toolbox, '__init__.py'), 'w') as f:
        f.write(f'raise {error}\n')
    code = f'BUILD = {build}\n' + textwrap.dedent("""
        import warnings
        warnings.simplefilter('always')
        import spanet_mm
        from spanet_mm.registry import UNAVAILABLE_TOOLBOXES
        print('UNAVAILABLE', sorted(UNAVAILABLE_TOOLBOXES))
        for scope in ('mmpretrain', 'mmdet', 'mmseg'):
            if scope in UNAVAILABLE_TOOLBOXES:
                continue
            registry = __import__(scope + '.registry', fromlist=['MODELS']).MODELS
            # module_dict, not get(): get() first imports the toolbox's own models, and
            # mmpretrain.models itself fails on a broken mmdet (it only catches ImportError).
            assert registry.module_dict['SPANet'] is spanet_mm.SPANet, scope
            print('REGISTERED', scope)
        if BUILD:
            from mmengine.registry import init_default_scope
            for scope in ('mmpretrain', 'mmdet', 'mmseg'):
                if scope not in UNAVAILABLE_TOOLBOXES:
                    init_default_scope(scope)
                    registry = __import__(scope + '.registry', fromlist=['MODELS']).MODELS
                    model = registry.build(dict(type='SPANet', init_cfg=None))
                    assert isinstance(model, spanet_mm.SPANet)
                    print('BUILT', scope)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([fake_root, REPO_ROOT]))
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_incompatible_mmdet_does_not_break_the_registration():
    # What mmdet 3.3.0 raises with mmcv 2.2.0: an AssertionError, not an ImportError.
    # (Building models then fails inside mmpretrain and mmseg themselves, whose model packages
    # import mmdet catching only ImportError; spanet_mm's own import and registration survive.)
    result = run_with_broken(
        'mmdet', "AssertionError('MMCV==2.2.0 is used but incompatible.')", build=False)
    assert result.returncode == 0, result.stderr
    assert "UNAVAILABLE ['mmdet']" in result.stdout
    assert 'REGISTERED mmpretrain' in result.stdout and 'REGISTERED mmseg' in result.stdout
    assert 'MMCV==2.2.0 is used but incompatible' in result.stderr  # the user is told why


@pytest.mark.parametrize('missing, present', [('mmdet', ['mmpretrain', 'mmseg']),
                                              ('mmseg', ['mmpretrain', 'mmdet']),
                                              ('mmpretrain', ['mmdet', 'mmseg'])])
@pytest.mark.slow
def test_each_toolbox_works_without_the_others(missing, present):
    result = run_with_broken(
        missing, f"ModuleNotFoundError('No module named {missing}', name='{missing}')",
        build=True)
    assert result.returncode == 0, result.stderr
    assert f"UNAVAILABLE ['{missing}']" in result.stdout
    for scope in present:
        assert f'BUILT {scope}' in result.stdout
