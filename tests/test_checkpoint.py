"""Runner checkpoints load safely on torch >= 2.6 once spanet_mm is imported."""
import os.path as osp
import pickle
import shutil

import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint
from torch.utils.data import Dataset

import spanet_mm  # noqa: F401  installs the loader
from conftest import FileCreatingPayload
from spanet_mm.checkpoint import (CheckpointLoadError, CheckpointMismatchError, check_state_dict,
                                 load_local_checkpoint)


class _Regressor(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=(out.squeeze(1) - torch.stack(targets)).square().mean())
        return out


class _Points(Dataset):
    metainfo = dict(classes=('a', 'b'))

    def __len__(self):
        return 16

    def __getitem__(self, index):
        x = torch.tensor([index / 16, 1.0])
        return dict(inputs=x, targets=2 * x[0])


def make_runner(work_dir, max_epochs, **kwargs):
    return Runner(
        model=_Regressor(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=_Points(), batch_size=4,
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0),
        **kwargs)


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('run')
    make_runner(work_dir, max_epochs=2).train()
    return work_dir / 'epoch_2.pth'


def test_plain_weights_only_load_fails_without_the_allow_list(runner_checkpoint):
    """The problem being solved: torch's default refuses Runner checkpoints."""
    with pytest.raises(pickle.UnpicklingError):
        torch.load(runner_checkpoint)


def test_runner_checkpoint_loads(runner_checkpoint):
    checkpoint = _load_checkpoint(str(runner_checkpoint), map_location='cpu')
    assert {'meta', 'state_dict', 'message_hub', 'optimizer'} <= set(checkpoint)
    loss_history = checkpoint['message_hub']['log_scalars']['train/loss']
    assert np.isfinite(loss_history.mean())


def test_load_from_and_resume(runner_checkpoint, tmp_path):
    saved = torch.load(runner_checkpoint, weights_only=False)['state_dict']
    loaded = make_runner(tmp_path / 'a', max_epochs=2, load_from=str(runner_checkpoint))
    loaded.load_or_resume()
    for key, value in saved.items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    resumed = make_runner(tmp_path / 'b', max_epochs=3, load_from=str(runner_checkpoint),
                          resume=True)
    resumed.load_or_resume()
    assert resumed.train_loop.epoch == 2



def test_arbitrary_objects_are_refused(tmp_path):
    marker = tmp_path / 'pwned'
    torch.save({'state_dict': {}, 'payload': FileCreatingPayload(str(marker))},
               tmp_path / 'evil.pth')
    with pytest.raises(CheckpointLoadError, match='outside the allow-list'):
        _load_checkpoint(str(tmp_path / 'evil.pth'))
    assert not marker.exists()
    # Safe loading is still on for everyone else, too.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'evil.pth')
    assert not marker.exists()


def test_getattr_is_restricted_to_history_buffer_statistics(tmp_path):
    """A pickle may not use getattr to reach, e.g., ndarray.tofile (a file write)."""

    class Sneaky:

        def __reduce__(self):
            return (getattr, (np.ndarray, 'tofile'))

    torch.save({'x': Sneaky()}, tmp_path / 'sneaky.pth')
    with pytest.raises(CheckpointLoadError, match='getattr'):
        load_local_checkpoint(str(tmp_path / 'sneaky.pth'))


def test_getattr_reaches_only_the_statistics_of_history_buffer(tmp_path):
    """HistoryBuffer's statistics methods are allowed; none of its other attributes is."""

    class Sneaky:

        def __reduce__(self):
            return (getattr, (HistoryBuffer, 'register_statistics'))

    torch.save({'x': Sneaky()}, tmp_path / 'sneaky.pth')
    with pytest.raises(CheckpointLoadError, match='getattr'):
        load_local_checkpoint(str(tmp_path / 'sneaky.pth'))


def test_getattr_of_a_statistics_name_is_refused_on_other_types(tmp_path):
    """The statistics names (``max``, ``mean``, ...) are allowed as attributes of HistoryBuffer
    only: the same name on another allowed type (numpy's ndarray) is refused."""

    class Sneaky:

        def __reduce__(self):
            return (getattr, (np.ndarray, 'max'))

    torch.save({'x': Sneaky()}, tmp_path / 'sneaky.pth')
    with pytest.raises(CheckpointLoadError, match='getattr'):
        load_local_checkpoint(str(tmp_path / 'sneaky.pth'))


def test_unreadable_checkpoint_is_not_called_corrupt(runner_checkpoint, monkeypatch):
    """A file the user may not read raises PermissionError, not "truncated or corrupt,
    re-download it". Injected: the suite may run as root, which reads any file whatever its
    mode bits."""

    def denied(filename, *args, **kwargs):
        raise PermissionError(13, 'Permission denied', str(filename))

    monkeypatch.setattr(torch, 'load', denied)
    with pytest.raises(PermissionError) as error:
        load_local_checkpoint(str(runner_checkpoint))
    assert not isinstance(error.value, CheckpointLoadError)


def test_home_relative_path_loads(runner_checkpoint, tmp_path, monkeypatch):
    """``~`` expands as in mmengine's own local loader (``osp.expanduser``)."""
    monkeypatch.setenv('HOME', str(tmp_path))
    (tmp_path / 'ckpt.pth').write_bytes(runner_checkpoint.read_bytes())
    loaded = _load_checkpoint('~/ckpt.pth')
    torch.testing.assert_close(loaded['state_dict']['linear.weight'],
                               _load_checkpoint(str(runner_checkpoint))['state_dict']
                               ['linear.weight'])


@pytest.mark.parametrize('size', [0, 100, 2000])
def test_truncated_checkpoint(runner_checkpoint, tmp_path, size):
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(runner_checkpoint.read_bytes()[:size])
    with pytest.raises(CheckpointLoadError, match='truncated or corrupt'):
        _load_checkpoint(str(broken))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found. Check the path'):
        _load_checkpoint(str(tmp_path / 'missing.pth'))


class _Dense(BaseModel):
    """A dense-task model in miniature: a SPANet backbone with all four output norms."""

    def __init__(self):
        super().__init__()
        self.backbone = spanet_mm.SPANet(arch=dict(layers=[1] * 4, embed_dims=[8, 16, 24, 32]),
                                         out_indices=(0, 1, 2, 3), init_cfg=None)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        outs = self.backbone(inputs)
        return dict(loss=sum(out.mean() for out in outs)) if mode == 'loss' else outs


class _Images(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return dict(inputs=torch.rand(3, 32, 32))


def dense_runner(work_dir, **kwargs):
    return Runner(model=_Dense(), work_dir=str(work_dir),
                  custom_hooks=[dict(type='CheckpointCheckHook')], **kwargs)


def fine_tuning_runner(work_dir, load_from, resume=False, checkpoint=None, **kwargs):
    """``Runner.train()`` from ``load_from`` for one step at lr 0 (the weights stay)."""
    return dense_runner(
        work_dir, load_from=load_from, resume=resume, train_cfg=dict(by_epoch=False, max_iters=1),
        train_dataloader=dict(dataset=_Images(), sampler=dict(type='DefaultSampler'),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.0)),
        default_hooks=dict(checkpoint=checkpoint, logger=None), **kwargs)


def test_fine_tuning_loads_a_backbone_without_its_output_norms(tmp_path):
    """The official dense backbone starts every output norm new (weight 1, bias 0): a file
    without them loads for fine-tuning, and they keep their identity init."""
    state = {k: torch.randn_like(v) for k, v in _Dense().state_dict().items()
             if not k.startswith('backbone.norm')}
    torch.save(dict(state_dict=state), tmp_path / 'stages.pth')
    runner = fine_tuning_runner(tmp_path / 'run', str(tmp_path / 'stages.pth'))
    runner.train()
    loaded = runner.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    for i in range(4):
        assert torch.equal(loaded[f'backbone.norm{i}.weight'], torch.ones(8 * (i + 1)))
        assert torch.equal(loaded[f'backbone.norm{i}.bias'], torch.zeros(8 * (i + 1)))
    # Evaluating it (Runner.test()/val() load without building a train loop) would run the
    # norms untrained: refused, naming them.
    with pytest.raises(CheckpointMismatchError, match=r"8 missing tensor\(s\) \['backbone.norm0"):
        dense_runner(tmp_path / 'eval').load_checkpoint(str(tmp_path / 'stages.pth'))
    # A missing stage tensor is refused for fine-tuning all the same.
    del state['backbone.stages.1.0.mlp.fc1.weight']
    torch.save(dict(state_dict=state), tmp_path / 'short.pth')
    with pytest.raises(CheckpointMismatchError, match='1 missing'):
        fine_tuning_runner(tmp_path / 'run2', str(tmp_path / 'short.pth')).train()


@pytest.fixture
def logged():
    """``logged(runner)``: ``runner.train()``, and what it logged. Runners in one work dir
    started within a second share a log file: each gets only its own part."""
    seen = {}

    def train(runner) -> str:
        path = osp.join(runner.log_dir, f'{runner.timestamp}.log')
        runner.train()
        with open(path) as f:
            text = f.read()
        start, seen[path] = seen.get(path, 0), len(text)
        return text[start:]

    return train


def test_a_resume_that_finds_no_checkpoint_says_it_starts_from_scratch(tmp_path, logged):
    """mmengine starts such a run from scratch (as a preemptible job's first launch needs)
    and logs only "Auto resumed from the latest checkpoint None"."""
    # What --resume without a path sets: resume=True, load_from=None. Each run its own
    # experiment_name: runners made within a second would otherwise share one logger (and the
    # first one's log file).
    text = logged(fine_tuning_runner(tmp_path / 'typo', load_from=None, resume=True,
                                     experiment_name='typo'))
    assert 'Auto resumed from the latest checkpoint None' in text  # mmengine's own line
    assert f'Resuming found no checkpoint in the work dir {tmp_path / "typo"}' in text
    assert 'training starts from scratch' in text
    # Saved, then resumed: no such warning.
    logged(fine_tuning_runner(tmp_path / 'run', load_from=None, checkpoint=dict(
        type='CheckpointHook', interval=1, by_epoch=False), experiment_name='saved'))
    text = logged(fine_tuning_runner(tmp_path / 'run', load_from=None, resume=True,
                                     experiment_name='resumed'))
    assert 'Auto resumed from the latest checkpoint' in text and 'iter_1.pth' in text
    assert 'Resuming found no checkpoint' not in text


def test_a_fresh_run_into_an_earlier_runs_work_dir_warns_it_overwrites(tmp_path, logged):
    """mmengine overwrites an earlier run's iter_N.pth / epoch_N.pth without a word when a
    run that does not resume is started in its work dir."""
    run, save = tmp_path / 'run', dict(type='CheckpointHook', interval=1, by_epoch=False)
    first = logged(fine_tuning_runner(run, load_from=None, checkpoint=save, experiment_name='1'))
    assert 'of an earlier run' not in first
    again = logged(fine_tuning_runner(run, load_from=None, checkpoint=save, experiment_name='2'))
    assert (f'The work dir {run} has the `last_checkpoint` of an earlier run (the last: '
            f'{run / "iter_1.pth"})') in again
    assert "overwrites that run's checkpoints of the same name" in again and '--resume' in again
    resumed = logged(fine_tuning_runner(run, load_from=None, resume=True, checkpoint=save,
                                        experiment_name='3'))
    assert 'Auto resumed from the latest checkpoint' in resumed
    assert 'of an earlier run' not in resumed
    # Resuming a file of this work dir continues the run: no warning; one of another work
    # dir still overwrites this one's checkpoints: warned.
    here = logged(fine_tuning_runner(run, load_from=str(run / 'iter_1.pth'), resume=True,
                                     checkpoint=save, experiment_name='4'))
    assert 'of an earlier run' not in here
    shutil.copy(run / 'iter_1.pth', tmp_path / 'other.pth')
    elsewhere = logged(fine_tuning_runner(run, load_from=str(tmp_path / 'other.pth'),
                                          resume=True, checkpoint=save, experiment_name='5'))
    assert 'of an earlier run' in elsewhere
    # No CheckpointHook, nothing is saved: no warning. An unreadable last_checkpoint: a warning
    # that says so, and the run goes on.
    assert 'of an earlier run' not in logged(
        fine_tuning_runner(run, load_from=None, experiment_name='6'))
    (run / 'last_checkpoint').write_bytes(b'\xff\xfe')
    undecodable = logged(fine_tuning_runner(run, load_from=None, checkpoint=save,
                                            experiment_name='7'))
    assert 'of an earlier run (unreadable: ' in undecodable


def test_evaluation_loads_a_checkpoint_with_tensors_the_model_does_not_have(tmp_path):
    """A file trained with an auxiliary head, tested with a config without it: every tensor
    of the model fits, so it is evaluated (mmengine logs the extra keys); extra tensors inside
    the backbone would still mean another arch."""
    state = {k: torch.randn_like(v) for k, v in _Dense().state_dict().items()}
    extra = dict(state, **{'auxiliary_head.conv_seg.weight': torch.zeros(2, 8, 1, 1)})
    torch.save(dict(state_dict=extra), tmp_path / 'aux.pth')
    runner = dense_runner(tmp_path / 'eval')
    runner.load_checkpoint(str(tmp_path / 'aux.pth'))
    assert all(torch.equal(runner.model.state_dict()[k], v) for k, v in state.items())
    deeper = dict(state, **{'backbone.stages.0.1.norm1.weight': torch.ones(8)})
    torch.save(dict(state_dict=deeper), tmp_path / 'deeper.pth')
    with pytest.raises(CheckpointMismatchError, match=r"1 tensor\(s\) the model does not have"):
        dense_runner(tmp_path / 'eval2').load_checkpoint(str(tmp_path / 'deeper.pth'))


def test_non_finite_weights_are_refused(tmp_path):
    state = {k: torch.randn_like(v) for k, v in _Dense().state_dict().items()}
    state['backbone.stages.2.0.mlp.fc2.weight'][0, 0] = float('nan')
    state['backbone.norm3.bias'][1] = float('inf')
    torch.save(dict(state_dict=state), tmp_path / 'nan.pth')
    with pytest.raises(CheckpointLoadError, match=r'NaN or inf values in 2 tensor\(s\)'):
        dense_runner(tmp_path / 'run').load_checkpoint(str(tmp_path / 'nan.pth'))


def test_a_file_of_another_arch_is_named_so_and_a_nested_one_gets_its_prefix(tmp_path):
    """Every key is the model's but every shape another: the message says another arch (it
    said "not spanet_mm SPANet"); keys one level down say which ``prefix=`` loads them."""
    own = spanet_mm.SPANet(arch=dict(layers=[1] * 4, embed_dims=[8, 16, 24, 32]),
                           init_cfg=None).state_dict()
    wider = spanet_mm.SPANet(arch=dict(layers=[1] * 4, embed_dims=[16, 32, 48, 64]),
                             init_cfg=None).state_dict()
    with pytest.raises(CheckpointMismatchError, match='another SPANet arch') as refused:
        check_state_dict(own, dict(state_dict=wider, meta=dict(arch='wide')))
    assert 'saved for SPANet arch wide' in str(refused.value)
    assert 'not spanet_mm SPANet' not in str(refused.value)
    nested = {f'backbone.{k}': v for k, v in own.items()}
    with pytest.raises(CheckpointMismatchError, match="prefix='backbone'"):
        check_state_dict(own, nested)


def test_compare_state_dicts_key_by_key_and_shape_by_shape():
    from spanet_mm.checkpoint import compare_state_dicts
    own = {'a.weight': torch.zeros(2, 3), 'a.bias': torch.zeros(2), 'norm1.weight': torch.zeros(4),
           'b.weight': torch.zeros(5)}
    loaded = {'a.weight': torch.ones(2, 3), 'a.bias': torch.ones(3),  # another shape
              'b.weight': np.zeros(5, dtype=np.float32),  # right shape, but not a tensor
              'extra.weight': torch.ones(1), 'norm7.weight': torch.ones(4)}
    fit = compare_state_dicts(own, loaded)
    assert fit.fitting == ['a.weight'] and fit.mismatched == ['a.bias', 'b.weight']
    assert fit.missing == ['norm1.weight'] and fit.unexpected == ['extra.weight', 'norm7.weight']
    excused = compare_state_dicts(own, loaded, allowed_missing=[r'norm\d+\.'])
    assert excused.missing == [] and excused.unexpected == ['extra.weight']


def test_model_state_dict_selects_a_prefix():
    from spanet_mm.checkpoint import model_state_dict
    saved = {'state_dict': {'module.backbone.x': torch.zeros(1), 'module.head.y': torch.zeros(1)}}
    for prefix in ('backbone', 'backbone.'):
        assert list(model_state_dict(saved, 'f.pth', prefix)) == ['x']
    assert list(model_state_dict(saved, 'f.pth')) == ['backbone.x', 'head.y']
    with pytest.raises(CheckpointMismatchError, match="f.pth has no key starting with 'neck.'"):
        model_state_dict(saved, 'f.pth', 'neck')


def test_whole_model_refuses_a_head_of_another_shape():
    """Testing with a head of another number of classes would evaluate a random head: refused
    with whole_model=True; fine-tuning (the default) starts the new head, with a warning."""
    own = {'backbone.w': torch.zeros(4), 'head.fc.weight': torch.zeros(10, 4),
           'head.fc.bias': torch.zeros(10)}
    saved = {'backbone.w': torch.ones(4), 'head.fc.weight': torch.ones(1000, 4),
             'head.fc.bias': torch.ones(1000)}
    with pytest.raises(CheckpointMismatchError,
                       match=r"another shape for 2 of its other tensors \['head.fc.weight: "
                       r'checkpoint \(1000, 4\) vs model \(10, 4\)'):
        check_state_dict(own, saved, whole_model=True)
    assert check_state_dict(own, saved) is not None
