"""Analysis and demo tools: plot_spectral_response.py, image_demo.py, the converter's progress
and its refusal to write over its source."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_tool, run_python, usage_error

PLOT = osp.join(REPO_ROOT, 'tools', 'analysis', 'plot_spectral_response.py')
IMAGE_DEMO = osp.join(REPO_ROOT, 'tools', 'image_demo.py')
DEMO_CLS = osp.join(REPO_ROOT, 'configs', 'classification', 'demo', 'spanet_demo_cls.py')
DEMO_DET = osp.join(REPO_ROOT, 'configs', 'detection', 'demo', 'mask_rcnn_spanet_demo.py')
DEMO_SEG = osp.join(REPO_ROOT, 'configs', 'segmentation', 'demo', 'fpn_spanet_demo.py')


def photo():
    from matplotlib import cbook
    return cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)


def run_tool(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT)
    return run_python(*args, env=env, timeout=timeout)


def png_is_non_trivial(path, min_side=200):
    import matplotlib.image as mpimg
    img = mpimg.imread(str(path))
    assert img.shape[0] >= min_side and img.shape[1] >= min_side
    # Not a blank canvas: many distinct colours.
    return len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20


@pytest.mark.slow  # the tool end to end (in-process), with matplotlib's rendering
def test_plot_spectral_response(tmp_path):
    # A checkpoint of the demo classifier, as tools/train.py would write it.
    from spanet_mm.apis import init_model
    model = init_model(DEMO_CLS)
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), tmp_path / 'cls.pth')

    out = tmp_path / 'plots'
    load_tool(PLOT).main([DEMO_CLS, str(tmp_path / 'cls.pth'), '--img', photo(), '--out-dir',
                          str(out), '--size', '128'])
    for name in ('spectral_filters.png', 'feature_spectra.png'):
        assert png_is_non_trivial(out / name)
    data = json.loads((out / 'spectral_response.json').read_text())
    # Stage sizes for a 128 input: 32, 16, 8, 4; radii 2, 2, 1, 1.
    assert [f['size'] for f in data['filters']] == [[32, 32], [16, 16], [8, 8], [4, 4]]
    assert [f['radius'] for f in data['filters']] == [2, 2, 1, 1]
    first = data['filters'][0]['filters'][0]
    assert first['lam'] == pytest.approx(0.7) and first['gain'][0] == pytest.approx(0.7)
    assert first['gain'][-1] == pytest.approx(0.3)
    for spectrum in data['spectra']:
        assert spectrum['relative_log_amplitude'][0] == 0
        assert spectrum['frequency'][-1] == pytest.approx(np.pi)


def test_plot_spectral_response_refuses_a_wrong_checkpoint(tmp_path):
    from spanet_mm.engine import CheckpointMismatchError
    torch.save(dict(state_dict={'conv1.weight': torch.zeros(1)}), tmp_path / 'other.pth')
    with pytest.raises(CheckpointMismatchError, match="has no key starting with 'backbone.'"):
        load_tool(PLOT).main([DEMO_CLS, str(tmp_path / 'other.pth'), '--img', photo(),
                              '--out-dir', str(tmp_path / 'plots')])
    assert not (tmp_path / 'plots').exists()  # nothing written


def test_plot_spectral_response_takes_a_classifier_checkpoint_for_a_detection_config(tmp_path):
    """The docstring's promise: a converted ImageNet file (the classifier's, with its final
    norm only) plots a detection config's backbone, whose other output norms start new."""
    from spanet_mm.apis import init_model
    det = init_model(DEMO_DET, cfg_options={'model.backbone.init_cfg': None})
    arch, dims = det.backbone.arch, det.backbone.embed_dims
    classifier = init_model(DEMO_CLS, cfg_options={
        'model.backbone.arch': dict(layers=arch['layers'], embed_dims=dims),
        'model.head.in_channels': dims[-1]})
    state = {k: torch.randn_like(v) for k, v in classifier.state_dict().items()}
    torch.save(dict(state_dict=state), tmp_path / 'in1k.pth')
    tool = load_tool(PLOT)
    backbone, _, _ = tool.build_model(DEMO_DET, str(tmp_path / 'in1k.pth'), 'cpu')
    for key, value in backbone.state_dict().items():
        if f'backbone.{key}' in state:
            assert torch.equal(value, state[f'backbone.{key}']), key
        else:  # the detector's new output norms
            assert key.startswith('norm') and torch.all(value == (1 if 'weight' in key else 0))


@pytest.mark.slow
def test_image_demo_runs_the_three_inferencers(tmp_path):
    out = tmp_path / 'demo'
    load_tool(IMAGE_DEMO).main([DEMO_CLS, DEMO_DET, DEMO_SEG, '--out-dir', str(out)])
    for name, ext in (('spanet_demo_cls', 'png'), ('mask_rcnn_spanet_demo', 'jpg'),
                      ('fpn_spanet_demo', 'jpg')):
        vis = out / name / 'vis' / f'grace_hopper.{ext}'
        assert vis.is_file() and png_is_non_trivial(vis), name
        pred = json.loads((out / name / 'pred.json').read_text())
        assert pred['checkpoint'] is None
        # only what a re-run may replace (tools/image_demo.py refuses folders with more)
        assert {p.name for p in (out / name).iterdir()} <= {'pred.json', 'vis', 'pred'}, name
    assert json.loads((out / 'spanet_demo_cls' / 'pred.json').read_text())['pred_class'] in (
        'circle', 'square', 'triangle', 'cross')
    assert not list(out.glob('*.tmp'))


@pytest.mark.slow
def test_image_demo_checks_arguments_before_writing(tmp_path):
    tool = load_tool(IMAGE_DEMO)
    with pytest.raises(SystemExit, match='one per config'):
        tool.main([DEMO_CLS, DEMO_DET, '--checkpoints', 'none', '--out-dir', str(tmp_path / 'd')])
    with pytest.raises(SystemExit, match='missing.pth not found'):
        tool.main([DEMO_CLS, '--checkpoints', str(tmp_path / 'missing.pth'),
                   '--out-dir', str(tmp_path / 'd')])
    assert not (tmp_path / 'd').exists()


def no_inference(*args, **kwargs):
    raise AssertionError('a model was built although the arguments were to be refused')


@pytest.mark.parametrize('kind', ['work_dir', 'symlink'])
def test_image_demo_leaves_a_work_dir_alone(kind, tmp_path):
    """``--out-dir work_dirs`` names tools/train.py's default work dirs (work_dirs/<config
    name>): a folder there with more than image_demo's outputs is refused, not replaced."""
    tool = load_tool(IMAGE_DEMO)
    tool.TASKS = dict.fromkeys(tool.TASKS, no_inference)
    work_dir = tmp_path / 'work_dirs' / 'spanet_demo_cls'
    target = work_dir if kind == 'work_dir' else tmp_path / 'elsewhere'
    target.mkdir(parents=True)
    (target / 'epoch_1.pth').write_bytes(b'trained weights')
    (target / 'vis').mkdir()  # a name image_demo writes too: the checkpoint still counts
    if kind == 'symlink':
        work_dir.parent.mkdir()
        work_dir.symlink_to(target)
    from spanet_mm.engine.launch import ToolOptionError
    with pytest.raises(ToolOptionError, match=f'{work_dir} exists and .*--out-dir'):
        tool.main([DEMO_CLS, '--out-dir', str(tmp_path / 'work_dirs')])
    assert (target / 'epoch_1.pth').read_bytes() == b'trained weights'
    assert sorted(p.name for p in (tmp_path / 'work_dirs').iterdir()) == ['spanet_demo_cls']


def test_image_demo_refuses_two_configs_with_one_output_folder(tmp_path):
    """The same config twice (e.g. with two checkpoints) would write to one folder, the second
    result replacing the first: refused before any model is built."""
    from spanet_mm.engine.launch import ToolOptionError
    tool = load_tool(IMAGE_DEMO)
    tool.TASKS = dict.fromkeys(tool.TASKS, no_inference)
    with pytest.raises(ToolOptionError, match=r'would both write to .*spanet_demo_cls \(the '
                       'folder is named after the config file\), the second result replacing'):
        tool.main([DEMO_CLS, DEMO_CLS, '--checkpoints', 'none', 'none',
                   '--out-dir', str(tmp_path / 'd')])
    assert not (tmp_path / 'd').exists()


def test_converter_refuses_to_write_over_its_source(official_fixture, tmp_path):
    """SRC == DST (also through a symlinked folder) would replace the official file (its fp16
    weights and filters) by the converted one: refused before the file is read."""
    converter = load_tool('tools/model_converters/spanet_official_to_mm.py')
    src = tmp_path / 'spanet.pth'
    torch.save(dict(official_fixture['classification']['state_dict']), src)
    original = src.read_bytes()
    (tmp_path / 'link').symlink_to(tmp_path)
    for dst in (src, tmp_path / 'link' / 'spanet.pth'):
        with pytest.raises(SystemExit, match=f'error: the output {dst} is the source file'):
            converter.main([str(src), str(dst)])
        assert src.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ['link', 'spanet.pth']


def test_plot_spectral_response_refuses_another_backbone(tmp_path):
    from spanet_mm.apis import NotSPANetError
    (tmp_path / 'resnet.py').write_text("_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']\n")
    with pytest.raises(NotSPANetError, match='the backbone is ResNet, not SPANet'):
        load_tool(PLOT).main([str(tmp_path / 'resnet.py'), 'none', '--img', photo(),
                              '--out-dir', str(tmp_path / 'plots')])
    assert not (tmp_path / 'plots').exists()


def not_an_image(tmp_path):
    path = tmp_path / 'notes.jpg'
    path.write_text('not an image\n')
    return str(path)


def test_plot_spectral_response_refuses_bad_options_before_the_model(tmp_path, capsys,
                                                                     monkeypatch):
    """--size below MIN_INPUT_SIZE had failed in SPANet's forward, a non-image with a bare
    ``cv2.error ... !_src.empty()``, a file as --out-dir with FileExistsError, --device cuda
    without CUDA deep in torch: each one error line, before the model is built."""
    import torch
    tool = load_tool(PLOT)
    tool.build_model = no_inference
    out = str(tmp_path / 'plots')
    argv = [DEMO_CLS, 'none', '--img', photo(), '--out-dir', out]
    assert usage_error(tool.main, argv + ['--size', '16'], capsys).endswith(
        "argument --size: '16': an input side (SPANet downsamples by 32) must be an integer "
        '>= 32')
    (tmp_path / 'file').write_text('')
    for out_dir in (tmp_path / 'file', tmp_path / 'file' / 'sub'):
        assert usage_error(tool.main, argv + ['--out-dir', str(out_dir)], capsys).endswith(
            f'argument --out-dir: {tmp_path / "file"} is a file, not a folder; give a folder '
            '(it is made if missing)')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert usage_error(tool.main, argv + ['--device', 'cuda'], capsys).endswith(
        'argument --device: cuda: torch.cuda.is_available() is False here (no CUDA GPU or '
        'driver, or a CPU-only torch); use --device cpu')
    bad = not_an_image(tmp_path)
    with pytest.raises(SystemExit, match=f'error: cannot read {bad} as an image'):
        tool.main([DEMO_CLS, 'none', '--img', bad, '--out-dir', out])
    assert not osp.exists(out)


def test_image_demo_refuses_bad_options_before_the_model(tmp_path, capsys, monkeypatch):
    """A non-image had failed with a ValueError traceback in the inferencer, --device cuda
    without CUDA deep in torch, a file as --out-dir with FileExistsError/NotADirectoryError."""
    import torch
    tool = load_tool(IMAGE_DEMO)
    tool.TASKS = dict.fromkeys(tool.TASKS, no_inference)
    out = str(tmp_path / 'd')
    bad = not_an_image(tmp_path)
    with pytest.raises(SystemExit, match=f'error: cannot read {bad} as an image'):
        tool.main([DEMO_CLS, '--img', bad, '--out-dir', out])
    (tmp_path / 'file').write_text('')
    for out_dir in (tmp_path / 'file', tmp_path / 'file' / 'sub'):
        assert usage_error(tool.main, [DEMO_CLS, '--out-dir', str(out_dir)], capsys).endswith(
            f'argument --out-dir: {tmp_path / "file"} is a file, not a folder; give a folder '
            '(it is made if missing)')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert usage_error(tool.main, [DEMO_CLS, '--out-dir', out, '--device', 'cuda:0'],
                       capsys).endswith('argument --device: cuda:0: torch.cuda.is_available() '
                                        'is False here (no CUDA GPU or driver, or a CPU-only '
                                        'torch); use --device cpu')
    assert not osp.exists(out)


@pytest.mark.slow
@pytest.mark.parametrize('config', [DEMO_CLS, DEMO_DET, DEMO_SEG],
                         ids=['mmpretrain', 'mmdet', 'mmseg'])
def test_image_demo_refuses_a_checkpoint_of_another_model(config, tmp_path):
    """The inferencers alone load it non-strictly and predict with random weights."""
    from spanet_mm.engine import CheckpointMismatchError
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(64, 3, 7, 7)}),
               tmp_path / 'resnet.pth')
    with pytest.raises(CheckpointMismatchError, match='resnet.pth does not fit the model'):
        load_tool(IMAGE_DEMO).main([config, '--checkpoints', str(tmp_path / 'resnet.pth'),
                                    '--out-dir', str(tmp_path / 'd')])
    assert not (tmp_path / 'd').exists() or not any((tmp_path / 'd').iterdir())  # nothing


def test_image_demo_refuses_a_checkpoint_without_the_head(tmp_path):
    """The backbone's weights alone (a detector's, an ImageNet backbone): the inferencer would
    predict with a random head."""
    from spanet_mm.apis import init_model
    from spanet_mm.engine import CheckpointMismatchError
    state = {k: v for k, v in init_model(DEMO_CLS).state_dict().items()
             if k.startswith('backbone.')}
    torch.save(dict(state_dict=state), tmp_path / 'backbone.pth')
    with pytest.raises(CheckpointMismatchError, match=r"\['head.fc.*holds only a part of this model"):
        load_tool(IMAGE_DEMO).main([DEMO_CLS, '--checkpoints', str(tmp_path / 'backbone.pth'),
                                    '--out-dir', str(tmp_path / 'd')])
    assert not (tmp_path / 'd').exists() or not any((tmp_path / 'd').iterdir())


@pytest.mark.slow
def test_image_demo_refusal_as_a_process_is_one_error_line(tmp_path):
    torch.save(dict(state_dict={'backbone.conv1.weight': torch.zeros(64, 3, 7, 7)}),
               tmp_path / 'resnet.pth')
    result = run_tool(IMAGE_DEMO, DEMO_CLS, '--checkpoints', tmp_path / 'resnet.pth',
                      '--out-dir', tmp_path / 'd')
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f'ERROR: {tmp_path / "resnet.pth"} does not fit the model'), result.stderr[-2000:]


@pytest.mark.slow
def test_image_demo_predicts_with_the_checkpoint(tmp_path):
    """A classifier whose head favours one class: the demo's prediction is that class."""
    from spanet_mm.apis import init_model
    model = init_model(DEMO_CLS)
    state = model.state_dict()
    state['head.fc.weight'] = torch.zeros_like(state['head.fc.weight'])
    state['head.fc.bias'] = torch.tensor([0., 0., 9., 0.])  # class 2 of the demo's four
    torch.save(dict(state_dict=state), tmp_path / 'cls.pth')
    out = tmp_path / 'd'
    load_tool(IMAGE_DEMO).main([DEMO_CLS, '--checkpoints', str(tmp_path / 'cls.pth'),
                                '--out-dir', str(out)])
    pred = json.loads((out / 'spanet_demo_cls' / 'pred.json').read_text())
    assert pred['pred_label'] == 2 and pred['pred_score'] > 0.99, pred


@pytest.mark.slow
def test_converter_progress_and_non_finite_refusal(official_fixture, tmp_path):
    """The progress bar runs over every tensor; a NaN weight (which every loader refuses) is
    refused by name and nothing is written."""
    converter = osp.join(REPO_ROOT, 'tools', 'model_converters', 'spanet_official_to_mm.py')
    state = dict(official_fixture['classification']['state_dict'])
    torch.save(state, tmp_path / 'src.pth')
    result = run_tool(converter, tmp_path / 'src.pth', tmp_path / 'dst.pth')
    assert result.returncode == 0, result.stderr
    total = len(torch.load(tmp_path / 'dst.pth', weights_only=True)['state_dict'])
    assert f'{total}/{total}' in result.stderr  # the progress bar reached the end

    state['head.bias'] = torch.full_like(state['head.bias'], float('nan'))
    torch.save(state, tmp_path / 'nan.pth')
    result = run_tool(converter, tmp_path / 'nan.pth', tmp_path / 'nan_dst.pth')
    assert result.returncode != 0
    assert "NaN or inf values in 1 tensor(s) (e.g. ['head.fc.bias'])" in result.stderr
    assert not (tmp_path / 'nan_dst.pth').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dst.pth', 'nan.pth', 'src.pth']


def test_image_demo_default_image_and_rerun_replaces_the_result(tmp_path):
    """Without --img the demo paints matplotlib's photograph of Grace Hopper; a second run
    into the same --out-dir replaces the config's folder of the first run's outputs (nothing of
    them is left, nor a .tmp folder)."""
    import shutil
    tool = load_tool(IMAGE_DEMO)
    out = tmp_path / 'demo'
    result = out / 'spanet_demo_cls'
    tool.main([DEMO_CLS, '--out-dir', str(out)])
    assert json.loads((result / 'pred.json').read_text())['image'] == photo()
    assert sorted(p.name for p in (result / 'vis').iterdir()) == ['grace_hopper.png']
    (result / 'vis' / 'stale.png').write_text('from the first run')
    second = tmp_path / 'second.jpg'
    shutil.copy(photo(), second)
    tool.main([DEMO_CLS, '--img', str(second), '--out-dir', str(out)])
    assert sorted(p.name for p in result.iterdir()) == ['pred.json', 'vis']
    assert sorted(p.name for p in (result / 'vis').iterdir()) == ['second.png']
    assert json.loads((result / 'pred.json').read_text())['image'] == str(second)
    assert sorted(p.name for p in out.iterdir()) == ['spanet_demo_cls']  # no .tmp folder
