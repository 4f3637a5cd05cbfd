"""Train the bundled demo model: a small CNN on scikit-learn's handwritten digits (8x8), exported to ONNX.

Run once by a developer (needs torch and scikit-learn); the outputs are committed as package data:
    qrt/data/digits_cnn.onnx      the float model, exported with a dynamic batch axis, BatchNorm kept
                                  so that the optimizer's folding has work to do
    qrt/data/digits.npz           calibration split and held-out split (uint8 pixels 0..16, int64 labels)
Usage: python scripts/train_digits_cnn.py
"""
import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "qrt", "data")


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def main():
    torch.manual_seed(0)
    digits = load_digits()
    images = digits.images.astype(np.uint8)            # pixel values 0..16
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.3, random_state=0,
                                                        stratify=labels)
    x_calib, y_calib = x_train[:256], y_train[:256]

    def prepare(x):
        return torch.from_numpy(x.astype(np.float32)[:, None] / 16.0)

    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = prepare(x_train), torch.from_numpy(y_train)
    for epoch in range(40):
        model.train()
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(prepare(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"held-out accuracy (torch, float): {accuracy:.4f}")

    os.makedirs(DATA, exist_ok=True)
    torch.onnx.export(model, prepare(x_test[:1]), os.path.join(DATA, "digits_cnn.onnx"),
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.EVAL)
    np.savez_compressed(os.path.join(DATA, "digits.npz"), calib_images=x_calib, calib_labels=y_calib,
                        test_images=x_test, test_labels=y_test)


if __name__ == "__main__":
    main()
