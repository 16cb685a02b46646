"""The sample format: round trip, and untrusted files refused without running anything."""
import os
import pickle

import pytest
import torch
import torchvision.transforms as T

from bench import samples
from model_arch import PreActResNet18

MNIST_LIKE = T.Compose([T.Resize((28, 28)), T.Grayscale(num_output_channels=3), T.ToTensor(), T.Normalize([0.5], [0.5])])


def _write(folder, width=4, k=10, truth=1):
    model = PreActResNet18(k, width)
    imgs = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8)
    samples.write(str(folder), model.state_dict(), k, MNIST_LIKE, imgs, list(range(6)), truth)
    return model


def test_round_trip(tmp_path):
    model = _write(tmp_path / 's')
    s = samples.read(str(tmp_path / 's'))
    assert s.num_classes == 10 and s.ground_truth == 1
    assert [type(t) for t in s.transformation.transforms] == [type(t) for t in MNIST_LIKE.transforms]
    assert sorted(os.listdir(s.images))[:2] == ['0_0.jpg', '1_1.jpg']
    rebuilt = samples.build_model(s.state_dict, s.num_classes)
    x = torch.randn(2, 3, 28, 28)
    assert torch.allclose(rebuilt(x), model.eval()(x))


class _Evil:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_pickle_that_runs_a_command_is_refused(tmp_path, monkeypatch):
    _write(tmp_path / 's')
    monkeypatch.chdir(tmp_path)
    meta = {'num_classes': 10, 'test_images_folder_address': './test_dataset', 'transformation': _Evil()}
    with open(tmp_path / 's' / 'metadata.pt', 'wb') as f:
        pickle.dump(meta, f)  # a plain pickle, as an attacker would write it
    torch.save(meta, tmp_path / 's' / 'metadata2.pt')  # and through torch.save too
    with pytest.raises(samples.SampleError, match='metadata.pt'):
        samples.read(str(tmp_path / 's'))
    os.replace(tmp_path / 's' / 'metadata2.pt', tmp_path / 's' / 'metadata.pt')
    with pytest.raises(samples.SampleError):
        samples.read(str(tmp_path / 's'))
    assert not (tmp_path / 'pwned').exists()


def test_truncated_model_wrong_keys_and_escaping_path_are_reported(tmp_path):
    _write(tmp_path / 's')
    path = tmp_path / 's' / 'model.pt'
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(samples.SampleError, match='model.pt'):
        samples.read(str(tmp_path / 's'))

    _write(tmp_path / 'k')
    s = samples.read(str(tmp_path / 'k'))
    bad = dict(s.state_dict)
    bad['linear.weight'] = torch.zeros(3, 3)
    with pytest.raises(samples.SampleError, match='does not fit'):
        samples.build_model(bad, 10)

    _write(tmp_path / 'e')
    meta = torch.load(tmp_path / 'e' / 'metadata.pt', weights_only=False)
    meta['test_images_folder_address'] = '../k/test_dataset'
    torch.save(meta, tmp_path / 'e' / 'metadata.pt')
    with pytest.raises(samples.SampleError, match='outside the sample folder'):
        samples.read(str(tmp_path / 'e'))


def test_find_lists_sample_folders(tmp_path):
    _write(tmp_path / 'b')
    _write(tmp_path / 'a' / 'nested')
    assert samples.find(str(tmp_path)) == [str(tmp_path / 'a' / 'nested'), str(tmp_path / 'b')]


def test_find_filters_by_folder_name(tmp_path):
    for name in ('m-s1', 'm-s100', 'x-s1'):
        _write(tmp_path / name)
    assert samples.find(str(tmp_path), 'm-s1') == [str(tmp_path / 'm-s1'), str(tmp_path / 'm-s100')]
    assert samples.find(str(tmp_path), 'm-s1', exact=True) == [str(tmp_path / 'm-s1')]
    assert samples.find(str(tmp_path / 'x-s1'), 'm-s1') == []  # a sample given directly is filtered too
    assert samples.find(str(tmp_path), 's1', exact=True) == []
