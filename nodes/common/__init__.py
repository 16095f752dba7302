"""What both patches and several node faces share: hooks kept across model clones, ComfyUI's SDPA
call, notices to the browser, error wording and the previews of word chips."""
