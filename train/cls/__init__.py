"""The second-stage leukocyte classifier: crops, timm model, training, predictor."""
