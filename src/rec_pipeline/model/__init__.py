"""The model: field embedding bags, the DeepFM backbone (wide, FM, deep), the MMoE and the task
towers (docs/model.md, Model). Pure PyTorch; shapes use B batch, F fields, D dim, E experts."""
