"""TorchServe's MNIST example handler: the stock `ImageClassifier` with its own 1-channel
transform, answering the most likely digit. Written against TorchServe's `ts` package, it runs
unchanged in TorchServe and in marfleet (whose images have no TorchServe: marfleet's `ts`
package serves it there), and both keep a grayscale image grayscale.
"""

from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class MNISTDigitClassifier(ImageClassifier):
    image_processing = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )

    def postprocess(self, data):
        return data.argmax(1).tolist()
