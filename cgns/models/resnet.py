"""ResNet-50 whose parameter and buffer names are torchvision's (conv1, bn1, layer1..4 with downsample.0/1, fc).

A torchvision ImageNet state dict loads into it with strict=True. Bottleneck v1.5: the stride sits on the 3x3
convolution, as in torchvision.
"""
from __future__ import annotations

import torch.nn as nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """forward(images [B,3,S,S]) -> layer4 map [B,2048,S/32,S/32]; stages() gives the stem and every layer.

    num_classes > 0 adds torchvision's `fc` (used by classify()); 0 leaves it out, which is how the encoders use it.
    """

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._in_channels = 64
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.out_channels = 512 * Bottleneck.expansion
        self.fc = nn.Linear(self.out_channels, num_classes) if num_classes > 0 else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, width: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(nn.Conv2d(self._in_channels, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        layers = [Bottleneck(self._in_channels, width, stride, downsample)]
        self._in_channels = out_channels
        layers += [Bottleneck(out_channels, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self, images):
        """[stem (stride 2, 64 ch), layer1 (4, 256), layer2 (8, 512), layer3 (16, 1024), layer4 (32, 2048)]."""
        stem = self.relu(self.bn1(self.conv1(images)))
        x = self.layer1(self.maxpool(stem))
        outputs = [stem, x]
        for layer in (self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outputs.append(x)
        return outputs

    def forward(self, images):
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def classify(self, images):
        if self.fc is None:
            raise RuntimeError("this ResNet was built with num_classes=0 (no fc)")
        return self.fc(self.forward(images).mean(dim=(2, 3)))


def resnet50(num_classes: int = 0) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes=num_classes)
