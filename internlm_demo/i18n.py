"""Every app's user-facing words in English and 中文, one section per app (and ``loading``, which all share); format
fields are filled by the caller."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

LANGUAGES = ("English", "中文")

DEMO_DOWNLOAD_EN = (
    "To chat with InternLM, download a real model: `.venv/bin/python download.py internlm2_5-7b-chat`, "
    "then start `bash scripts/run.sh chat -- --model internlm2_5-7b-chat`."
)
DEMO_DOWNLOAD_ZH = ("要与书生·浦语对话，请先下载真实模型：`.venv/bin/python download.py internlm2_5-7b-chat`，"
                    "再运行 `bash scripts/run.sh chat -- --model internlm2_5-7b-chat`。")

# The chat page (apps/chat.py). key: (English, 中文)
CHAT: dict[str, tuple[str, str]] = {
    "title": ("InternLM Chat", "书生·浦语 对话"),
    "title_remote": ("Chat with {model_id}", "与 {model_id} 对话"),
    "language": ("Language / 语言", "Language / 语言"),
    "demo_banner": (
        "**Demo model.** `{model_id}` is a tiny model with random weights, generated on this machine: "
        "its replies are noise. " + DEMO_DOWNLOAD_EN,
        "**演示模型。** `{model_id}` 是在本机生成的随机权重小模型，回复没有意义。" + DEMO_DOWNLOAD_ZH,
    ),
    "standin_banner": (
        "**Stand-in model.** No InternLM weights are downloaded, so `{model_id}`, a small real model (135M "
        "parameters) shipped with the install, answers instead: fine for simple questions, far from InternLM. "
        "To chat with InternLM: `.venv/bin/python download.py {real_id}`, then "
        "`bash scripts/run.sh chat -- --model {real_id}`.",
        "**替身模型。** 尚未下载书生·浦语权重，因此由随安装附带的小型真实模型 `{model_id}`（1.35 亿参数）代为回答："
        "能回答简单问题，但远不及书生·浦语。要与书生·浦语对话：`.venv/bin/python download.py {real_id}`，"
        "再运行 `bash scripts/run.sh chat -- --model {real_id}`。",
    ),
    "loading_model": ("Loading the model…", "正在加载模型…"),
    "load_failed": ("**The model could not be loaded.**\n\n{error}", "**模型加载失败。**\n\n{error}"),
    "load_fix": (
        ("Fix: pass `--model` a folder that holds `config.json`, `tokenizer.model` and the weights, or a model id "
        "downloaded with `.venv/bin/python download.py ID`; without `--model` the app starts without downloaded weights. "
        "Example: `bash scripts/run.sh chat -- --model internlm2_5-7b-chat`."),
        ("解决办法：`--model` 应指向包含 `config.json`、`tokenizer.model` 和权重文件的文件夹，或用 "
        "`.venv/bin/python download.py ID` 下载过的模型 ID；不带 `--model` 时无需下载权重即可启动。"
        "示例：`bash scripts/run.sh chat -- --model internlm2_5-7b-chat`。"),
    ),
    "load_fix_remote": (
        ("Fix: start an OpenAI-compatible server first — ours (`bash scripts/run.sh server -- --model ...`, port "
         "23333), LMDeploy's `lmdeploy serve api_server`, vLLM or llama.cpp's server — then pass its address, ending "
         "in `/v1`, as `--api-base` (now `{api_base}`)."),
        ("解决办法：先启动一个兼容 OpenAI 的服务——本项目的（`bash scripts/run.sh server -- --model ...`，端口 23333）、"
         "LMDeploy 的 `lmdeploy serve api_server`、vLLM 或 llama.cpp 的服务——再把以 `/v1` 结尾的地址传给 "
         "`--api-base`（当前为 `{api_base}`）。"),
    ),
    "load_unexpected": ("{kind}: {error}", "{kind}：{error}"),
    "bad_flags": ("**The command-line flags after `--` were not accepted.** Usage: `{usage}`",
                  "**`--` 之后的命令行参数有误。** 用法：`{usage}`"),
    "generation": ("Generation", "生成参数"),
    "max_length": ("Max length (prompt + reply tokens)", "最大长度（提示 + 回复 token 数）"),
    "max_new_tokens": ("Max new tokens", "最多生成 token 数"),
    "top_p": ("Top-p", "Top-p"),
    "temperature": ("Temperature (0 = greedy)", "温度（0 为贪心解码）"),
    "top_k": ("Top-k (0 = off)", "Top-k（0 为不限）"),
    "repetition_penalty": ("Repetition penalty", "重复惩罚"),
    "seed": ("Seed", "随机种子"),
    "seed_random": ("random for each reply", "每次回复随机"),
    "system_prompt": ("System prompt", "系统提示词"),
    "context": ("Context", "上下文"),
    "meter": ("{used} of {window} tokens used by history + prompt; {reply} left for the reply",
              "历史 + 提示占用 {used} / {window} 个 token；回复最多 {reply} 个"),
    "meter_estimated": ("Counts are generous estimates: the server has no tokenizer endpoint.",
                        "数值为偏保守的估算：该服务没有分词接口。"),
    "meter_assumed": (
        "The window of {window} tokens is assumed: the server does not say its own. If it is smaller, the first "
        "reply past it fails and the server's own window is used from then on; set it with `--api-context-window` "
        "(or `INTERNLM_DEMO_API_CONTEXT_WINDOW`).",
        "{window} 个 token 的窗口是假定值：该服务不公布自己的窗口。若实际更小，第一次超出时回复会失败，之后改用服务自己的窗口；"
        "可用 `--api-context-window`（或 `INTERNLM_DEMO_API_CONTEXT_WINDOW`）设定。"),
    "control_unsupported": ("{server} at {api_base} has no such setting, so it is off here.",
                            "{api_base} 上的 {server} 没有此项设置，因此在此禁用。"),
    "system_prompt_server_default": ("Empty: the server's default", "留空：使用服务的默认设置"),
    "meter_dropped": ("The next prompt leaves out {turns} to fit.", "下一次提问将省略{turns}以放入上下文。"),
    "turn_one": ("turn {numbers}", "第 {numbers} 轮"),
    "turns_many": ("turns {numbers}", "第 {numbers} 轮"),
    "list_separator": (", ", "、"),
    "conversation": ("Conversation", "对话"),
    "export": ("Export as JSON", "导出为 JSON"),
    "import": ("Import a conversation (JSON)", "导入对话（JSON）"),
    # Streamlit's own words in the import box (English only; the page shows these in their place).
    "upload_browse": ("Upload", "上传"),
    "upload_limit": ("{limit}MB per file • JSON", "JSON 文件，每个最大 {limit}MB"),
    "import_confirm": ("**Replace this conversation?** The file holds {imported} message(s) made with `{model_id}`; "
                       "the {current} message(s) on the page would be replaced.",
                       "**要替换当前对话吗？** 文件中有 {imported} 条消息（来自 `{model_id}`）；页面上现有的 {current} 条消息将被替换。"),
    "import_replace": ("Replace", "替换"),
    "import_keep": ("Keep this conversation", "保留当前对话"),
    "imported": ("Loaded the conversation (made with `{model_id}`): continue it or regenerate the last reply.",
                 "已载入对话（来自 `{model_id}`）：可继续对话或重新生成最后一条回复。"),
    "import_failed": ("**This file cannot be imported:** {error}", "**无法导入该文件：** {error}"),
    "model_panel": ("Model", "模型"),
    "model_id": ("Model", "模型"),
    "family": ("Family", "系列"),
    "dtype": ("Data type", "数据类型"),
    "device_map": ("Devices", "设备"),
    "memory": ("GPU memory", "显存"),
    "memory_cpu": ("CPU (no GPU memory used)", "CPU（未使用显存）"),
    "tokens_per_s": ("Last reply: tokens/s", "上次回复：token/秒"),
    "ttft": ("Last reply: time to first token", "上次回复：首 token 延迟"),
    "ttft_prompt": (" (after reading a {tokens}-token prompt)", "（读入 {tokens} 个 token 的提示后）"),
    "not_yet": ("—", "—"),
    "remote": ("served by {api_base}", "由 {api_base} 提供"),
    "placeholder": ("Message InternLM (Enter to send)", "给书生·浦语发消息（回车发送）"),
    "placeholder_remote": ("Message {model_id} (Enter to send)", "给 {model_id} 发消息（回车发送）"),
    "stop": ("Stop", "停止"),
    "regenerate": ("Regenerate", "重新生成"),
    "clear": ("Clear", "清空"),
    "copy": ("Copy", "复制"),
    "copied": ("Copied", "已复制"),
    "copy_failed": ("Copy failed: select the text instead", "复制失败：请手动选择文本"),
    "stopped_mark": ("(stopped)", "（已停止）"),
    "cut_mark": ("(cut off: the server ended this reply without saying why, most likely for another request)",
                 "（被截断：服务未说明原因就结束了这条回复，多半是为了处理另一个请求）"),
    "partial_kept": ("What came before the failure:", "失败前已收到的内容："),
    "queued": ("Queued ({ahead} ahead): every generation slot is busy with other sessions.",
               "排队中（前面还有 {ahead} 个）：所有生成槽位都在处理其他会话。"),
    "waiting": ("Waiting for a free generation slot…", "等待空闲的生成槽位…"),
    "engine": ("Generation", "生成方式"),
    "stopping": ("Stopping…", "正在停止…"),
    "dropped_notice": ("To fit the context window, this reply was generated without {turns} of the conversation.",
                       "为放入上下文窗口，本次回复未包含{turns}对话。"),
    "overflow_notice": (
        ("**Message too long:** it is {tokens} tokens with the prompt format, but the budget is {window} tokens "
        "(max length). Shorten it or raise max length; your message was not sent and is still in the message box."),
        ("**消息过长：** 加上提示格式共 {tokens} 个 token，而上限为 {window} 个（最大长度）。"
        "请缩短消息或调大最大长度；消息未发送，仍在输入框中。"),
    ),
    "error_notice": ("**The reply failed:** {error}\n\nYour message is back in the message box.",
                     "**生成回复失败：** {error}\n\n你的消息已放回输入框。"),
}


# The XComposer app's frame and its "Multimodal chat" tab (apps/xcomposer/).
XCOMPOSER: dict[str, tuple[str, str]] = {
    "switch": ("中文", "English"),  # the language button names the other language
    "tab_chat": ("Multimodal chat", "多模态对话"),
    "chatbot": ("InternLM-XComposer", "浦语·灵笔"),
    "input": ("Attach an image (optional), type your question and press Enter", "可附上一张图片，输入问题后按回车"),
    "parameters": ("Parameters", "参数"),
    "max_output_tokens": ("Max output tokens", "最多输出字数"),
    "num_beams": ("Beam size", "集束大小"),
    "repetition_penalty": ("Repetition penalty", "重复惩罚"),
    "do_sample": ("Sample", "采样"),
    "stop": ("Stop", "停止"),
    "regenerate": ("Regenerate", "重新生成"),
    "clear": ("Clear history", "清空聊天框"),
    "model": ("Model", "模型"),
    "no_model": ("The model could not be loaded:", "模型无法加载："),
    "demo_warning": (
        "Demo model: tiny and randomly initialised, its replies are noise. For the real model: "
        "`.venv/bin/python download.py internlm-xcomposer-7b`, then "
        "`bash scripts/run.sh xcomposer -- --model internlm-xcomposer-7b`.",
        "演示模型：极小且随机初始化，回复没有意义。使用真实模型：`.venv/bin/python download.py internlm-xcomposer-7b`，"
        "再运行 `bash scripts/run.sh xcomposer -- --model internlm-xcomposer-7b`。",
    ),
    "dropped": ("The {dropped} oldest exchange(s) no longer fit the model's context window and were left out.",
                "最早的 {dropped} 轮对话超出了模型的上下文窗口，已被省略。"),
    "generation_failed": ("Generation failed: {error}", "生成失败：{error}"),
    "nothing_to_regenerate": ("There is no reply to regenerate yet.", "还没有可以重新生成的回复。"),
    # Why an image cannot be used (ImageRejectedError); also inside the article tab's note_image_rejected.
    "the_image": ("the image", "该图片"),
    "error_image_missing": ("{name}: no such file.", "{name}：文件不存在。"),
    "error_image_empty": ("{name} is empty (0 bytes); upload the image again.", "{name} 是空文件（0 字节）；请重新上传图片。"),
    "error_image_too_large": ("{name} is {megabytes:.0f} MB; images up to {limit} MB are accepted. Save it at a smaller "
                              "size or as JPEG.",
                              "{name} 有 {megabytes:.0f} MB，只接受不超过 {limit} MB 的图片。请缩小尺寸或存成 JPEG 格式。"),
    "error_image_bomb": ("{name} has far more pixels than can be decoded safely; images up to {limit} megapixels are "
                         "accepted. Downscale it first (the model sees 224×224 anyway).",
                         "{name} 的像素数远超安全解码的上限，只接受不超过 {limit} 百万像素的图片。请先缩小"
                         "（模型看到的反正只是 224×224）。"),
    "error_image_too_many_pixels": ("{name} is {width}×{height} ({megapixels:.0f} megapixels); images up to {limit} "
                                    "megapixels are accepted. Downscale it first (the model sees 224×224 anyway).",
                                    "{name} 为 {width}×{height}（{megapixels:.0f} 百万像素），只接受不超过 {limit} 百万像素"
                                    "的图片。请先缩小（模型看到的反正只是 224×224）。"),
    "error_image_unreadable": ("{name} is not an image this app can read; use a PNG, JPEG, GIF, WebP, BMP or TIFF file.",
                               "{name} 不是本应用能读取的图片；请使用 PNG、JPEG、GIF、WebP、BMP 或 TIFF 文件。"),
    "error_image_damaged": ("{name} is damaged and cannot be read ({error}); try re-saving it.",
                            "{name} 已损坏，无法读取（{error}）；请尝试重新保存。"),
    "error_image_truncated": ("{name} is damaged or truncated ({error}); try re-saving or re-uploading it.",
                              "{name} 已损坏或不完整（{error}）；请尝试重新保存或重新上传。"),
    "error_image_mode": ("{name} uses colour mode {mode}, which cannot be converted to RGB ({error}).",
                         "{name} 使用 {mode} 色彩模式，无法转换为 RGB（{error}）。"),
    "error_conversation_too_long": (
        "the message takes {positions} positions (an image takes {image_positions}); with {new_tokens} output tokens "
        "that exceeds the model's context window of {window}. Shorten the message or lower the max output tokens.",
        "这条消息占 {positions} 个位置（一张图片占 {image_positions} 个），再加上 {new_tokens} 个输出 token，"
        "超出了模型 {window} 个位置的上下文窗口。请缩短消息，或调小“最多输出字数”。"),
}

# The XComposer app's "Write article" tab.
ARTICLE: dict[str, tuple[str, str]] = {
    "tab": ("Write article", "创作图文并茂文章"),
    "title": ("Write an illustrated article based on the given title:", "根据给定标题写一个图文并茂的文章："),
    "submit": ("Submit", "生成"),
    "image_count": ("Number of images: once the article is written, the button beside places exactly this many",
                    "配图数量：文章生成后，点击右侧按钮即按此数量重新配图"),
    "fixed": ("Insert this many images", "按此数量配图"),
    "advanced": ("Advanced Settings", "高级设置"),
    "beams": ("Beam size", "集束大小"),
    "repetition": ("Repetition penalty", "重复惩罚"),
    "max_tokens": ("Max output tokens", "最多输出字数"),
    "model_selects": ("Model selects images", "模型选图"),
    "sampling": ("Sample", "采样"),
    "gallery": ("Gallery (folders are set with --gallery when the app starts)", "图库（启动时用 --gallery 指定文件夹）"),
    "demo_gallery": ("the generated demo gallery", "生成的演示图库"),
    "index": ("Index gallery", "建立图库索引"),
    "section": ("Section", "段落"),
    "caption": ("Caption (Enter searches)", "图片描述（回车即搜索）"),
    "search": ("Search again", "重新搜索"),
    "candidates": ("Candidates — click one to use it", "候选图像——点击一张即可使用"),
    "add": ("Add image", "添加配图"),
    "delete": ("Delete image", "删除配图"),
    "edit": ("Edit the article", "编辑文章"),
    "section_text": ("Section text", "段落文字"),
    "apply_text": ("Apply the text", "应用文字修改"),
    "image_mark": ("[image]", "[图]"),
    "examples": ("Examples", "示例"),
    "save": ("Save article", "文章下载"),
    "file": ("Article (zip: article.md + images/)", "文章（zip：article.md + images/）"),
    "stage_writing": ("writing", "写文章"),
    "stage_placing": ("placing", "选段落"),
    "stage_captioning": ("captioning", "写图片描述"),
    "stage_retrieving": ("retrieving", "检索图片"),
    "stage_selecting": ("selecting", "选图"),
    "done": ("Done: {images} image(s) in {sections} section(s).", "完成：{sections} 段文字，{images} 张配图。"),
    "note": ("Note:", "提示："),
    "note_sections_unparsed": ("The model's choice of sections did not parse; {count} evenly spaced section(s) were "
                               "illustrated instead.", "模型给出的配图段落无法解析，改为均匀选取 {count} 段配图。"),
    "note_too_few_sections": ("{asked} images were asked for, but the article has only {sections} section(s): "
                              "{placed} image(s) placed.", "要求配 {asked} 张图，但文章只有 {sections} 段：配了 {placed} 张。"),
    "note_sections_topped_up": ("The model named {named} usable section(s) for the {wanted} image(s); the rest were "
                                "chosen evenly spaced.", "模型为 {wanted} 张图给出了 {named} 个可用段落，其余段落均匀选取。"),
    "note_image_rejected": ("Section {section}: {error} Candidate A was kept.", "第 {section} 段：{error} 保留了候选图 A。"),
    "note_pick_unparsed": ("Section {section}: the model's pick of a candidate did not parse; candidate A was used.",
                           "第 {section} 段：模型的选图结果无法解析，使用了候选图 A。"),
    "note_gallery_exhausted": ("Section {section}: the gallery has no unused image left; it stays without one.",
                               "第 {section} 段：图库中已没有未用过的图片，该段不配图。"),
    "note_caption_missing": ("Section {section}: the model wrote no caption; the section's last words were used.",
                             "第 {section} 段：模型没有写出图片描述，改用该段结尾的文字。"),
    "indexing": ("indexing the gallery: {path}", "正在为图库建立索引：{path}"),
    "indexed": ("{status} Index: {summary}.", "{status} 索引：{summary}。"),
    "index_failed": ("✗ {error}", "✗ {error}"),
    "write_first": ("Write an article first.", "请先生成文章。"),
    "nothing_to_save": ("Write an article first; there is nothing to save yet.", "请先生成文章，目前没有可保存的内容。"),
    "section_updated": ("Section {number} updated.", "第 {number} 段已更新。"),
    # The gallery's status line (GalleryIndex.status) and what one indexing did (IndexReport.summary).
    "gallery_no_images": ("The gallery {root} has no images ({suffixes}).{skipped}",
                          "图库 {root} 中没有图片（{suffixes}）。{skipped}"),
    "gallery_images": ("Gallery {root}: {count} images, matched by {method}.{skipped}",
                       "图库 {root}：{count} 张图片，按 {method} 匹配。{skipped}"),
    "gallery_skipped": (" Skipped {count} unreadable file(s): {files}{more}.", "跳过了 {count} 个无法读取的文件：{files}{more}。"),
    "gallery_skipped_file": ("{path}: {reason}", "{path}：{reason}"),
    "gallery_skipped_more": (" and {count} more", "，另有 {count} 个"),
    "list_separator": ("; ", "；"),
    "skip_folder_unreadable": ("cannot read folder: {error}", "无法读取文件夹：{error}"),
    "skip_link_outside": ("a link to a file outside the gallery", "指向图库以外文件的链接"),
    "skip_no_stat": ("cannot stat: {error}", "无法读取文件信息：{error}"),
    "skip_too_large": ("image too large (decompression bomb limit)", "图片过大（超出解压炸弹防护的上限）"),
    "skip_unreadable": ("not a readable image ({error})", "不是可读取的图片（{error}）"),
    "summary": ("{reused} reused, {added} added, {updated} updated, {removed} removed{captioned}{skipped} ({seconds:.1f} s)",
                "沿用 {reused} 张，新增 {added} 张，更新 {updated} 张，移除 {removed} 张{captioned}{skipped}"
                "（{seconds:.1f} 秒）"),
    "summary_captioned": (", {count} captioned in {seconds:.1f} s", "，为 {count} 张写了描述，用时 {seconds:.1f} 秒"),
    "summary_skipped": (", {count} skipped", "，跳过 {count} 个"),
    # Why an edit, a run or the gallery cannot go on (ArticleError, GalleryError).
    "error_no_title": ("Type a title first, for example 又见敦煌 or “Shanghai travel guide in English”.",
                       "请先输入标题，例如“又见敦煌”或“Shanghai travel guide in English”。"),
    "error_title_too_long": ("The title is {length} characters long; keep it under {limit} characters. Give a title or "
                             "a short topic: the model writes the article itself.",
                             "标题有 {length} 个字符，请控制在 {limit} 个字符以内。只需给出标题或简短的主题，文章由模型来写。"),
    "error_gallery_empty": ("{status} Put some images in it (subfolders count) or choose another gallery folder.",
                            "{status}请往图库里放些图片（子文件夹里的也算），或选择其他图库文件夹。"),
    "error_nothing_written": ("The model wrote nothing for this title; try again with sampling on, or another title.",
                              "模型没有为这个标题写出任何内容；请打开采样再试，或换个标题。"),
    "error_prompt_too_long": ("The prompt is {tokens} tokens long, more than the model's {window}-token window; shorten "
                              "the article or the title.",
                              "提示有 {tokens} 个 token，超出了模型 {window} 个 token 的窗口；请缩短文章或标题。"),
    "error_no_section": ("There is no section {section}; the article has {count}.", "没有第 {section} 段；文章共 {count} 段。"),
    "error_empty_section": ("Section {section} cannot be empty; type its text (or keep the old one).",
                            "第 {section} 段不能为空；请输入文字（或保留原来的文字）。"),
    "error_no_caption": ("Type a caption to search for.", "请输入要搜索的图片描述。"),
    "error_no_match": ("No unused image in the gallery matches; delete an image elsewhere or add images to the gallery.",
                       "图库中没有匹配的未用图片；请删掉别处的配图，或往图库里添加图片。"),
    "error_gallery_used_up": ("The gallery has no unused image left; delete an image elsewhere or add images to the "
                              "gallery.", "图库中已没有未用过的图片；请删掉别处的配图，或往图库里添加图片。"),
    "error_no_image": ("Section {section} has no image; add one first.", "第 {section} 段没有配图；请先添加。"),
    "error_no_candidate": ("There is no candidate {candidate} for section {section}.",
                           "第 {section} 段没有第 {candidate} 张候选图。"),
    "error_image_taken": ("That image is already placed after another section; pick another one.",
                          "这张图片已配在另一段之后；请另选一张。"),
    "error_image_gone": ("The image for section {section} ({image}) is no longer in the gallery; pick another candidate "
                         "or search again.", "第 {section} 段的图片（{image}）已不在图库中；请另选候选图或重新搜索。"),
    "error_gallery_missing": ("The gallery folder {root} does not exist; create it and put images in it, or choose "
                              "another folder.", "图库文件夹 {root} 不存在；请创建它并放入图片，或选择其他文件夹。"),
    "error_gallery_not_folder": ("{root} is a file, not a folder; the gallery is a folder of images.",
                                 "{root} 是文件，不是文件夹；图库是存放图片的文件夹。"),
    "error_gallery_not_offered": ("{choice!r} is not one of this app's galleries; galleries are set when the app starts "
                                  "(--gallery FOLDER, several joined by ':', or INTERNLM_DEMO_GALLERY).",
                                  "{choice!r} 不是本应用的图库；图库在应用启动时设定（--gallery FOLDER，多个文件夹用 ':' "
                                  "连接，或用 INTERNLM_DEMO_GALLERY）。"),
}

# The agent page (apps/agent.py).
AGENT: dict[str, tuple[str, str]] = {
    "page_title": ("InternLM agent", "书生·浦语 智能体"),
    "language": ("Language / 语言", "Language / 语言"),
    "loading_model": ("Loading the model…", "正在加载模型…"),
    "bad_flags": ("The app's command-line arguments are not valid:\n\n```\n{usage}\n```",
                  "应用的命令行参数有误：\n\n```\n{usage}\n```"),
    "model_unusable": ("The model cannot be used: {error}", "无法使用该模型：{error}"),
    "placeholder": ("Ask something that needs a calculation or a bit of code", "问一个需要计算或写点代码的问题"),
    "scripted": ("Replaying the scripted session {source}: the model's outputs are canned, the code really runs in "
                 "the sandbox.", "正在回放脚本会话 {source}：模型输出是预先写好的，代码确实在沙箱中运行。"),
    "demo_banner": ("This is the embedded demo model with random weights: its replies are noise and it will not call "
                    "tools sensibly. For InternLM: `.venv/bin/python download.py internlm2_5-7b-chat`, then "
                    "`bash scripts/run.sh agent -- --model internlm2_5-7b-chat`.",
                    "这是内置的随机权重演示模型：回复没有意义，也不会合理地调用工具。要使用书生·浦语："
                    "`.venv/bin/python download.py internlm2_5-7b-chat`，"
                    "再运行 `bash scripts/run.sh agent -- --model internlm2_5-7b-chat`。"),
    "standin_banner": ("**Stand-in model.** No InternLM weights are downloaded, so `{model_id}`, a small real model, "
                       "answers instead; it was not trained to call tools. To use InternLM: "
                       "`.venv/bin/python download.py {real_id}`, then `bash scripts/run.sh agent -- --model {real_id}`.",
                       "**替身模型。** 尚未下载书生·浦语权重，因此由小型真实模型 `{model_id}` 代为回答；它没有学过调用工具。"
                       "要使用书生·浦语：`.venv/bin/python download.py {real_id}`，"
                       "再运行 `bash scripts/run.sh agent -- --model {real_id}`。"),
    "sandbox_below": ("The sandbox here reaches only the '{level}' isolation level, below the '{minimum}' minimum "
                      "(docs/agent-sandbox.md says what each level needs).",
                      "此处沙箱只能达到“{level}”隔离级别，低于最低要求“{minimum}”（各级别的要求见 docs/agent-sandbox.md）。"),
    "sandbox_weak_allowed": ("{below} Model code runs anyway because of `--allow-weak-sandbox`: do not offer this "
                             "page to anyone you do not trust.",
                             "{below} 由于使用了 `--allow-weak-sandbox`，模型代码仍会运行：请勿向不信任的人开放此页面。"),
    "sandbox_refused": ("{below} Model code will not run; start the app with `-- --allow-weak-sandbox` to accept it.",
                        "{below} 模型代码不会运行；如可接受，请用 `-- --allow-weak-sandbox` 启动应用。"),
    "prompt_language": ("Prompt language", "提示词语言"),
    "prompt_language_help": ("lagent's English or Chinese prompt texts, where lagent has both.",
                             "使用 lagent 的英文或中文提示词（lagent 两者都有时）。"),
    "exact": ("lagent's exact behaviour", "完全按照 lagent 的行为"),
    "exact_help": ("Off: a last turn that asks for the answer, `Response:` as a stop word for InternLM v1 and a "
                   "reminder after an empty reply (docs/agent-protocols.md).",
                   "关闭时：最后一轮要求给出答案，InternLM v1 以 `Response:` 为停止词，空回复后提醒模型"
                   "（见 docs/agent-protocols.md）。"),
    "model_protocol": ("Model: {model} · protocol: {protocol}", "模型：{model} · 协议：{protocol}"),
    "interpreter": ("Python interpreter", "Python 解释器"),
    "interpreter_help": ("Let the model run Python code in a sandboxed process.", "允许模型在沙箱进程中运行 Python 代码。"),
    "max_turns": ("Max turns", "最多轮数"),
    "max_turns_help": ("Model turns per question; the last one must give the answer.",
                       "每个问题的模型轮数；最后一轮必须给出答案。"),
    "max_new_tokens": ("Max new tokens per turn", "每轮最多生成 token 数"),
    "temperature": ("Temperature", "温度"),
    "temperature_help": ("0 picks the likeliest token.", "0 表示总是选择概率最高的 token。"),
    "stop": ("Stop", "停止"),
    "clear": ("Clear", "清空"),
    "sandbox_caption": ("Sandbox isolation: {level}. Code runs in a separate process with a fresh temporary folder "
                        "and is killed after {timeout} s.",
                        "沙箱隔离级别：{level}。代码在独立进程和全新的临时文件夹中运行，{timeout} 秒后终止。"),
    "step": ("Step {turn} · {label}", "第 {turn} 步 · {label}"),
    "tool_call": ("tool call", "工具调用"),
    "thought": ("thought", "思考"),
    "reply": ("reply", "回复"),
    "model_reply": ("The model's reply (not in the tool format)", "模型的回复（不符合工具调用格式）"),
    "empty": ("(empty)", "（空）"),
    "output": ("Output", "输出"),
    "feedback": ("Feedback to the model", "给模型的反馈"),
}

# Why a model folder cannot be loaded (ModelFolderError), in every app. Paths, commands, keys and the text of an
# OS or library error are fields, shown as they are.
LOADING: dict[str, tuple[str, str]] = {
    "fix_download": ("re-run `.venv/bin/python download.py MODEL --output {folder}` to fetch it again",
                     "可运行 `.venv/bin/python download.py MODEL --output {folder}` 重新下载"),
    "error_file_missing": ("{path} is missing: {what}.", "{path} 不存在：{what}。"),
    "what_config": ("this does not look like a model folder (pass the folder that holds config.json)",
                    "这看起来不是模型文件夹（请传入包含 config.json 的文件夹）"),
    "what_shard_index": ("the shard index", "分片索引"),
    "what_tokenizer_settings": ("tokenizer settings", "分词器设置"),
    "what_generation_settings": ("generation settings", "生成设置"),
    "error_json_invalid": ("{path} is not valid JSON ({error}); {fix}.", "{path} 不是有效的 JSON（{error}）；{fix}。"),
    "error_json_not_object": ("{path} holds a JSON {kind}, not an object; restore the original file ({fix}).",
                              "{path} 中是 JSON {kind}，而不是对象；请恢复原始文件（{fix}）。"),
    "json_list": ("list", "列表"),
    "json_string": ("string", "字符串"),
    "json_number": ("number", "数字"),
    "json_bool": ("true/false", "布尔值"),
    "json_null": ("null", "null"),
    "json_value": ("value", "值"),
    "error_bad_value": ("{path}: {key} is {value}, but it must be {wanted}; restore the original {name} ({fix}).",
                        "{path}：{key} 为 {value}，但必须是{wanted}；请恢复原始的 {name}（{fix}）。"),
    "want_whole_number": ("a whole number from 1 to {limit}", "从 1 到 {limit} 的整数"),
    "want_head_divisor": ("a divisor of hidden_size (hidden_size {hidden_size} is not a multiple of it)",
                          "能整除 hidden_size 的数（hidden_size {hidden_size} 不是它的倍数）"),
    "want_kv_head_divisor": ("a divisor of num_attention_heads ({heads})", "能整除 num_attention_heads（{heads}）的数"),
    "want_bool": ("true or false", "布尔值 true 或 false"),
    "want_finite": ("a finite number {lower}{upper}", "{lower}{upper} 的有限数"),
    "above_zero": ("above 0", "大于 0"),
    "at_least": ("≥ {at_least:g}", "不小于 {at_least:g}"),
    "below": (" below {below:g}", " 且小于 {below:g}"),
    "want_token_id": ("a token id from 0 to {last}", "从 0 到 {last} 的 token id"),
    "want_token_ids": ("a token id from 0 to {last} or a list of them", "从 0 到 {last} 的 token id 或由它们组成的列表"),
    "want_rope_object": ("null or an object such as {example}", "空值 null 或形如 {example} 的对象"),
    "error_config_lacks": ("{path} lacks {key!r}; restore the original config.json ({fix}).",
                           "{path} 缺少 {key!r}；请恢复原始的 config.json（{fix}）。"),
    "error_not_a_folder": ("{folder} is not a folder. Pass a folder that holds config.json and the weights, or a known "
                           "model id (see `.venv/bin/python download.py --list`).",
                           "{folder} 不是文件夹。请传入包含 config.json 和权重文件的文件夹，或已知的模型 ID"
                           "（见 `.venv/bin/python download.py --list`）。"),
    "error_no_weight_map": ("{path} has no weight_map; {fix}.", "{path} 中没有 weight_map；{fix}。"),
    "error_no_weights": ("{folder} holds no weights (no *.safetensors or pytorch_model*.bin with its index); {fix}.",
                         "{folder} 中没有权重文件（既没有 *.safetensors，也没有 pytorch_model*.bin 及其索引）；{fix}。"),
    "error_shard_missing": ("{name} is listed in the shard index but missing from {folder}; {fix}.",
                            "分片索引中列出了 {name}，但 {folder} 中没有这个文件；{fix}。"),
    "error_shard_empty": ("{path} is empty; {fix}.", "{path} 是空文件；{fix}。"),
    "error_shard_corrupt": ("{path} is truncated or corrupt ({error}); {fix}.", "{path} 不完整或已损坏（{error}）；{fix}。"),
    "error_shard_runs_code": ("{path} holds not only tensors: it asks to run Python code ({culprit}), which this loader "
                              "never does; get the original weights ({fix}).",
                              "{path} 中不只有张量：它要求运行 Python 代码（{culprit}），而本加载器从不运行代码；"
                              "请获取原始权重（{fix}）。"),
    "an_object": ("an object", "某个对象"),
    "error_not_downloaded": ("{model_id} is not downloaded yet (looked in {folder}); run "
                             "`.venv/bin/python download.py {model_id}` first, or pass the folder that holds its weights.",
                             "{model_id} 尚未下载（已查找 {folder}）；请先运行 `.venv/bin/python download.py {model_id}`，"
                             "或传入存放其权重的文件夹。"),
    "error_unknown_model": ("{name} is neither a folder nor a known model id ({known}).",
                            "{name} 既不是文件夹，也不是已知的模型 ID（{known}）。"),
    "error_config_key_missing": ("config.json lacks {key!r}; re-download the model's config.json.",
                                 "config.json 缺少 {key!r}；请重新下载该模型的 config.json。"),
    "error_tensor_shape": ("tensor {name} has shape {shape} but config.json implies {expected}; the weights in {shards} "
                           "do not belong to this config.json.",
                           "张量 {name} 的形状是 {shape}，而按 config.json 应为 {expected}；{shards} 中的权重与这个 "
                           "config.json 不配套。"),
    "error_tensor_dtype": ("tensor {name} in {shards} is stored as {dtype}, not as floating-point weights; quantized or "
                           "damaged checkpoints are not supported — use the original float16/bfloat16/float32 weights "
                           "(re-download the model).",
                           "{shards} 中的张量 {name} 以 {dtype} 存储，而不是浮点权重；不支持量化或已损坏的检查点——"
                           "请使用原始的 float16/bfloat16/float32 权重（重新下载模型）。"),
    "error_tensor_not_finite": ("tensor {name} in {shards} holds NaN or infinite values; the weights are damaged — "
                                "re-download the model.",
                                "{shards} 中的张量 {name} 含有 NaN 或无穷大的值；权重已损坏——请重新下载模型。"),
    "error_tensor_not_finite_converted": ("tensor {name} in {shards} holds NaN or infinite values (after conversion to "
                                          "{dtype}); the weights are damaged — re-download the model.",
                                          "{shards} 中的张量 {name} 转换为 {dtype} 后含有 NaN 或无穷大的值；权重已损坏——"
                                          "请重新下载模型。"),
    "error_tensors_missing": ("{count} {part}tensors are missing from the checkpoint (first: {first}); a shard is "
                              "incomplete — re-download the model.",
                              "检查点中缺少 {count} 个{part}张量（第一个：{first}）；有分片不完整——请重新下载模型。"),
    "part_image_encoder": ("image-encoder ", "图像编码器的"),
    "error_no_gpu": ("a GPU was asked for but torch sees none; pass --device cpu or install a CUDA build of torch.",
                     "要求使用 GPU，但 torch 检测不到任何 GPU；请传入 --device cpu，或安装支持 CUDA 的 torch。"),
    "error_too_few_gpus": ("--num-gpus {wanted} asked for, but torch sees {count} GPUs.",
                           "要求 --num-gpus {wanted}，但 torch 只检测到 {count} 块 GPU。"),
    "error_unknown_dtype": ("unknown dtype {dtype!r}; use one of {known}.", "未知的数据类型 {dtype!r}；请使用其中之一：{known}。"),
    "error_tokenizer_missing": ("{path} is missing; re-download the model (the tokenizer is part of it).",
                                "{path} 不存在；请重新下载模型（分词器是模型的一部分）。"),
    "error_tokenizer_unreadable": ("{path} cannot be read ({error}); re-download it.",
                                   "无法读取 {path}（{error}）；请重新下载这个文件。"),
    "error_unknown_model_type": ("{path} has model_type {model_type}, which this loader does not know; supported: "
                                 "internlm, internlm2, internlm3, llama, smollm2 (XComposer folders open in "
                                 "`python -m apps.xcomposer`).",
                                 "{path} 的 model_type 为 {model_type}，本加载器不认识；支持的有：internlm、internlm2、"
                                 "internlm3、llama、smollm2（XComposer 文件夹请用 `python -m apps.xcomposer` 打开）。"),
    "error_not_xcomposer": ("{path} has model_type {model_type}, not {expected!r}: this is not an InternLM-XComposer v1 "
                            "folder (chat models open in the chat apps; XComposer2 is not supported).",
                            "{path} 的 model_type 为 {model_type}，而不是 {expected!r}：这不是 InternLM-XComposer v1 "
                            "的文件夹（对话模型请在对话应用中打开；不支持 XComposer2）。"),
    "error_lora_config": ("config.json has an internlm_lora entry this loader cannot read ({error}); learn_param may hold "
                          "{targets} and lora_r/lora_alpha must be numbers.",
                          "config.json 中的 internlm_lora 项本加载器无法读取（{error}）；learn_param 只能包含 {targets}，"
                          "lora_r/lora_alpha 必须是数字。"),
    "error_half_bias": ("{block} has only one of q_bias/v_bias in the checkpoint; a shard is incomplete — re-download the "
                        "model.", "检查点中的 {block} 只有 q_bias/v_bias 其中之一；有分片不完整——请重新下载模型。"),
    "error_lora_unlisted": ("the checkpoint has a LoRA delta for {module}, which config.json's internlm_lora.learn_param "
                            "does not list.",
                            "检查点中有 {module} 的 LoRA 增量，但 config.json 的 internlm_lora.learn_param 没有列出它。"),
    "error_lora_unconfigured": ("the checkpoint has LoRA deltas ({name}) but config.json has no internlm_lora entry.",
                                "检查点中有 LoRA 增量（{name}），但 config.json 中没有 internlm_lora 项。"),
    "error_lora_incomplete": ("{module} lacks {missing} in the checkpoint; a shard is incomplete — re-download the model.",
                              "检查点中的 {module} 缺少 {missing}；有分片不完整——请重新下载模型。"),
    "error_standin_not_installed": ("the stand-in model's package {package} is not installed; run {install} (or re-run "
                                    "scripts/install.sh).",
                                    "替身模型的软件包 {package} 未安装；请运行 {install}（或重新运行 scripts/install.sh）。"),
    "error_standin_file_missing": ("{path} is missing from the {package} package; reinstall it: {install} (or re-run "
                                   "scripts/install.sh).",
                                   "{package} 软件包中缺少 {path}；请重新安装：{install}（或重新运行 scripts/install.sh）。"),
    "error_json_unparsable": ("{path} is not valid JSON ({error}).", "{path} 不是有效的 JSON（{error}）。"),
    "error_not_sentencepiece": ("{path} is not a sentencepiece model ({error}).",
                                "{path} 不是 sentencepiece 模型（{error}）。"),
    "error_missing": ("{path} is missing.", "{path} 不存在。"),
    "error_shards_truncated": ("the shards in {folder} hold {held} bytes but the shard index declares {declared}; some "
                               "are truncated.",
                               "{folder} 中的分片共 {held} 字节，而分片索引声明了 {declared} 字节；有的分片不完整。"),
}

SECTIONS = {"chat": CHAT, "xcomposer": XCOMPOSER, "article": ARTICLE, "agent": AGENT, "loading": LOADING}


def turn_list(t: Callable[..., str], numbers) -> str:
    """"turn 1" / "turns 1, 3" (第 1 轮 / 第 1、3 轮) in the language of the chat lookup ``t``."""
    numbers = [str(n) for n in numbers]
    return t("turn_one" if len(numbers) == 1 else "turns_many", numbers=t("list_separator").join(numbers))


@dataclass(frozen=True)
class Phrase:
    """Words put into a language only when shown: ``key`` in the table ``section``, ``fields`` fill it in. A field
    that is a Phrase is shown in the same language; a list of them is joined by the section's ``list_separator``."""

    section: str
    key: str
    fields: dict = field(default_factory=dict)

    def text(self, language: str = LANGUAGES[0]) -> str:
        t = labels(language, self.section)

        def shown(value):
            if isinstance(value, Phrase):
                return value.text(language)
            if isinstance(value, list):
                return t("list_separator").join(shown(item) for item in value)
            return value

        return t(self.key, **{name: shown(value) for name, value in self.fields.items()})

    def __str__(self) -> str:
        return self.text()


def labels(language: str, section: str) -> Callable[..., str]:
    """A lookup ``t(key, **fields)`` into ``section`` (a key of SECTIONS) in ``language`` (unknown means English)."""
    column = LANGUAGES.index(language) if language in LANGUAGES else 0
    table = SECTIONS[section]

    def t(key: str, /, **fields) -> str:
        text = table[key][column]
        return text.format(**fields) if fields else text

    return t
