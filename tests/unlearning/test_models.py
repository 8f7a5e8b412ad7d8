"""Backbones: output shapes, embeddings, and the two-layer CNN of 000 eq. 1."""

import torch

from unlearning.models import ResNet, SmallCNN, TwoLayerCNN


def test_two_layer_cnn_matches_eq_1_by_hand():
    torch.manual_seed(0)
    net = TwoLayerCNN(num_classes=2, dim=3, width=2)
    x = torch.randn(4, 1, 5, 3)  # 4 images of P=5 patches of dimension d=3
    expected = torch.zeros(4, 2)
    for n in range(4):
        for j in range(2):
            for r in range(2):
                for p in range(5):
                    expected[n, j] += torch.relu(net.filters[j, r] @ x[n, 0, p]) / 2
    assert torch.allclose(net(x), expected, atol=1e-6)
    assert net.embed(x).shape == (4, 4)


def test_small_cnn_and_resnet_shapes_and_embeddings():
    cnn = SmallCNN(num_classes=10, in_channels=1, width=8)
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert cnn.embed(torch.randn(2, 1, 8, 8)).shape == (2, 16)
    resnet = ResNet(18, num_classes=5, cifar_stem=True)
    x = torch.randn(2, 3, 32, 32)
    assert resnet(x).shape == (2, 5) and resnet.embed(x).shape == (2, 512)
    assert resnet.body.conv1.stride == (1, 1)
    assert torch.allclose(resnet.head(resnet.embed(x)), resnet(x))
