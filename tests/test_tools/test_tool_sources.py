"""The tools are scripts on the installed package, as upstream's are: none of them edits
``sys.path`` (with the package installed, a repository prepended there could shadow it with
another checkout), and tools/train.py and tools/test.py import neither each other nor any
other tool, and are no longer than the shortest of the toolboxes' own. Read from the sources'
syntax trees."""
import ast
import glob
import importlib
import os.path as osp

import pytest

from conftest import REPO_ROOT

TOOLS = sorted(glob.glob(osp.join(REPO_ROOT, 'tools', '**', '*.py'), recursive=True))
TOOL_MODULES = {osp.splitext(osp.basename(path))[0] for path in TOOLS}


def tree(path):
    with open(path) as f:
        return ast.parse(f.read(), filename=path)


def imported_modules(path):
    names = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_tools_are_found():
    assert len(TOOLS) >= 8 and {'train', 'test', 'benchmark', 'image_demo'} <= TOOL_MODULES


@pytest.mark.parametrize('path', TOOLS, ids=lambda p: osp.relpath(p, REPO_ROOT))
def test_no_tool_edits_sys_path(path):
    uses = [node.lineno for node in ast.walk(tree(path))
            if isinstance(node, ast.Attribute) and node.attr == 'path'
            and isinstance(node.value, ast.Name) and node.value.id == 'sys']
    assert not uses, f'{osp.relpath(path, REPO_ROOT)} uses sys.path at line(s) {uses}'


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_train_and_test_import_no_other_tool(tool):
    modules = imported_modules(osp.join(REPO_ROOT, 'tools', tool))
    tools = {m for m in modules if m.split('.')[0] in TOOL_MODULES | {'tools'}}
    assert not tools, f'tools/{tool} imports {sorted(tools)}'


def lines_of_code(path):
    """Lines that are neither blank nor comments (docstrings count: they are the usage)."""
    with open(path) as f:
        return sum(1 for line in f if line.strip() and not line.lstrip().startswith('#'))


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_train_and_test_as_thin_as_the_toolboxes_own(tool):
    """One tool serves three tasks, yet is no longer than the shortest of mmdet's, mmseg's and
    mmpretrain's own (their packaged tools/, .mim)."""
    upstream = {
        box: lines_of_code(osp.join(osp.dirname(importlib.import_module(box).__file__), '.mim',
                                    'tools', tool))
        for box in ('mmdet', 'mmseg', 'mmpretrain')}
    ours = lines_of_code(osp.join(REPO_ROOT, 'tools', tool))
    assert ours <= min(upstream.values()), (ours, upstream)
