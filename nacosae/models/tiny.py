"""Tiny random-weight vision models: real torchvision-style modules small enough for a CPU test.

Their results mean nothing; they exist so that tests and `--preset smoke` run the real code
paths in seconds without downloads.
"""

from __future__ import annotations

from torch import nn


class TinyCNN(nn.Module):
    """A three-stage CNN whose module names mirror torchvision ResNets (layer1.., avgpool, fc)."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.conv1 = nn.Conv2d(3, width, 7, stride=4, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = stage(width, width * 2)
        self.layer2 = stage(width * 2, width * 4)
        self.layer3 = stage(width * 4, width * 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x):  # noqa: ANN001, ANN201 - torch convention
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    return TinyCNN(num_classes=num_classes)


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """torchvision's VisionTransformer at 224 px with two 32-wide layers."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=224,
        patch_size=32,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=num_classes,
    )
