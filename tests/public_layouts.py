"""Small copies of the public chest X-ray data sets in their exact layouts: folder and file names, CSV headers,
list formats and odd corners as their documentation and downloads have them. Pixels are generated."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.imagefiles import save, smooth_image, write_dicom


def _img(path: Path, seed: int) -> Path:
    return save(path, smooth_image(seed))


def kermany(root: Path, kaggle_extras: bool = True) -> Path:
    """`chest_xray/<train|test|val>/<NORMAL|PNEUMONIA>/*.jpeg` as in Mendeley v2 and Kaggle's copy (which nests
    a second `chest_xray/` and a `__MACOSX/` folder, and carries `.DS_Store` files)."""
    top = root / "chest_xray"
    files = {
        "train/NORMAL": [f"IM-{100 + i:04d}-0001.jpeg" for i in range(8)]
        + ["IM-0100-0002.jpeg", "NORMAL2-IM-0095-0001.jpeg", "NORMAL2-IM-0095-0002.jpeg"],
        "train/PNEUMONIA": [f"person{i}_bacteria_{10 + i}.jpeg" for i in range(2, 9)]
        + ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person20_virus_51.jpeg"],
        "test/NORMAL": ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg", "NORMAL2-IM-0112-0001.jpeg"],
        "test/PNEUMONIA": ["person100_bacteria_475.jpeg", "person101_virus_187.jpeg", "person1_virus_9.jpeg"],
        "val/NORMAL": ["NORMAL2-IM-1427-0001.jpeg"],
        "val/PNEUMONIA": ["person1946_bacteria_4874.jpeg"],
    }
    seed = 0
    for folder, names in files.items():
        for name in names:
            seed += 1
            save(top / folder / name, smooth_image(seed), quality=90)
    if kaggle_extras:
        for where in (top, top / "train", top / "train" / "NORMAL"):
            (where / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        save(top / "chest_xray" / "train" / "NORMAL" / "IM-0100-0001.jpeg", smooth_image(1), quality=90)
        save(top / "chest_xray" / "test" / "PNEUMONIA" / "person1_virus_9.jpeg", smooth_image(2), quality=90)
        (top / "__MACOSX" / "chest_xray" / "train" / "NORMAL").mkdir(parents=True)
        (top / "__MACOSX" / "chest_xray" / "train" / "NORMAL" / "._IM-0100-0001.jpeg").write_bytes(b"\x00\x05")
    return top


RADIOGRAPHY_CLASSES = {"COVID": 6, "Normal": 6, "Viral Pneumonia": 5, "Lung_Opacity": 4}
RADIOGRAPHY_URLS = {
    "COVID": "https://sirm.org/category/senza-categoria/covid-19/",
    "Normal": "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",
    "Viral Pneumonia": "https://www.kaggle.com/paultimothymooney/chest-xray-pneumonia",
    "Lung_Opacity": "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",
}


def covid19_radiography(root: Path) -> Path:
    """`COVID-19_Radiography_Dataset/<Class>/{images,masks}/<Class>-N.png` and `<Class>.metadata.xlsx`
    (FILE NAME, FORMAT, SIZE, URL), as in the database's v4+ releases."""
    from openpyxl import Workbook

    top = root / "COVID-19_Radiography_Dataset"
    seed = 500
    for name, n in RADIOGRAPHY_CLASSES.items():
        book = Workbook()
        sheet = book.active
        sheet.append(["FILE NAME", "FORMAT", "SIZE", "URL"])
        for i in range(1, n + 1):
            seed += 1
            _img(top / name / "images" / f"{name}-{i}.png", seed)
            mask = (smooth_image(seed + 1000) > 128).astype(np.uint8) * 255
            save(top / name / "masks" / f"{name}-{i}.png", mask)
            # The real sheets name COVID files in upper case ("COVID-1") for some rows: matched without case.
            sheet.append([f"{name}-{i}".upper() if i % 2 else f"{name}-{i}", "PNG", "256*256", RADIOGRAPHY_URLS[name]])
        book.save(top / f"{name}.metadata.xlsx")
    (top / "README.md.txt").write_text("COVID-19 CHEST X-RAY DATABASE\n")
    return top


def covidx(root: Path) -> Path:
    """COVIDx CXR-3: `train.txt`, `val.txt`, `test.txt` as `patient_id filename class source`, over `train/`,
    `val/`, `test/`. Patient numbers repeat across its sources; one file name holds a space."""
    top = root / "covidx"
    lines = {
        "train": [
            ("1", "a1.png", "positive", "cohen"), ("1", "a2.png", "positive", "cohen"),
            ("1", "r1.png", "negative", "rsna"), ("2", "r2.png", "negative", "rsna"),
            ("3", "r3.png", "negative", "rsna"), ("4", "r4.png", "negative", "rsna"),
            ("5", "b1.png", "positive", "bimcv"), ("6", "b2.png", "positive", "bimcv"),
            ("7", "COVID-19 (10).png", "positive", "ricord"), ("8", "r5.png", "negative", "rsna"),
            ("9", "b3.png", "positive", "bimcv"), ("10", "r6.png", "negative", "rsna"),
        ],
        "val": [("11", "v1.png", "positive", "bimcv"), ("12", "v2.png", "negative", "rsna")],
        "test": [
            ("13", "t1.png", "positive", "bimcv"), ("14", "t2.png", "negative", "rsna"),
            ("15", "t3.png", "positive", "bimcv"), ("16", "t4.png", "negative", "rsna"),
        ],
    }  # fmt: skip
    seed = 900
    for split, rows in lines.items():
        for _, filename, _, _ in rows:
            seed += 1
            _img(top / split / filename, seed)
        (top / f"{split}.txt").write_text("".join(" ".join(r) + "\n" for r in rows))
    return top


NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
)


def nih_cxr14(root: Path) -> Path:
    """`Data_Entry_2017.csv` (its real header, trailing comma included) over `images_001/images/` and
    `images_002/images/`, with `train_val_list.txt` and `test_list.txt`; archive 003 not downloaded."""
    top = root / "nih"
    rows = [
        ("00000001_000.png", "Cardiomegaly", 0, 1, 58, "M", "PA", "images_001"),
        ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA", "images_001"),
        ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA", "images_001"),
        ("00000003_000.png", "Hernia", 0, 3, 81, "F", "PA", "images_001"),
        ("00000004_000.png", "Mass|Nodule", 0, 4, 82, "M", "AP", "images_001"),
        ("00000005_000.png", "No Finding", 0, 5, 69, "F", "PA", "images_001"),
        ("00000006_000.png", "No Finding", 0, 6, 61, "M", "PA", "images_001"),
        ("00000007_000.png", "Effusion|Pneumonia", 0, 7, 31, "M", "AP", "images_002"),
        ("00000008_000.png", "Pneumonia", 0, 8, 69, "F", "PA", "images_002"),
        ("00000008_001.png", "Infiltration|Pneumonia", 1, 8, 70, "F", "PA", "images_002"),
        ("00000009_000.png", "Pneumonia", 0, 9, 72, "M", "PA", "images_002"),
        ("00000010_000.png", "No Finding", 0, 10, 84, "F", "PA", "images_002"),
        ("00030801_000.png", "No Finding", 0, 30801, 39, "M", "PA", "images_003"),
    ]
    text = NIH_HEADER
    for seed, (index, findings, follow, pid, age, sex, view, archive) in enumerate(rows):
        text += f"{index},{findings},{follow},{pid},{age},{sex},{view},2500,2048,0.143,0.143,\n"
        if archive != "images_003":
            _img(top / archive / "images" / index, 1200 + seed)
    (top / "Data_Entry_2017.csv").write_text(text)
    test = {"00000002_000.png", "00000008_000.png", "00000008_001.png", "00000010_000.png", "00000004_000.png"}
    (top / "test_list.txt").write_text("".join(f"{r[0]}\n" for r in rows if r[0] in test))
    (top / "train_val_list.txt").write_text("".join(f"{r[0]}\n" for r in rows if r[0] not in test))
    return top


RSNA_IDS = [f"{i:08x}-1b2c-4d5e-8f90-{i:012x}" for i in range(1, 10)]


def rsna_pneumonia(root: Path) -> Path:
    """`stage_2_train_labels.csv` (one row per box, several rows per positive patient, empty box fields for
    negatives), `stage_2_detailed_class_info.csv` (one row per labels row) and `stage_2_train_images/*.dcm`
    (RLE Lossless, as hospital exports often are), plus the unlabelled `stage_2_test_images/`."""
    top = root / "rsna"
    classes = ["Lung Opacity", "Lung Opacity", "Normal", "Normal", "No Lung Opacity / Not Normal"] * 2
    labels = ["patientId,x,y,width,height,Target\n"]
    detail = ["patientId,class\n"]
    for i, pid in enumerate(RSNA_IDS):
        kind = classes[i]
        boxes = [(264.0, 152.0, 213.0, 379.0), (562.0, 152.0, 256.0, 453.0)] if kind == "Lung Opacity" else [None]
        for box in boxes:
            labels.append(f"{pid},{','.join(str(v) for v in box)},1\n" if box else f"{pid},,,,,0\n")
            detail.append(f"{pid},{kind}\n")
        write_dicom(top / "stage_2_train_images" / f"{pid}.dcm", smooth_image(1500 + i), 8, patient_id=pid, rle=True)
    write_dicom(top / "stage_2_test_images" / "0000a175-0e68-4ca4-b1af-167204a7e0bc.dcm", smooth_image(9), 8)
    (top / "stage_2_train_labels.csv").write_text("".join(labels))
    (top / "stage_2_detailed_class_info.csv").write_text("".join(detail))
    return top


def montgomery(root: Path, n: int = 6) -> Path:
    """`MontgomerySet/` as NLM ships it: `CXR_png/MCUCXR_NNNN_L.png`, `ClinicalReadings/*.txt` (sex and age
    lines, then the reading), `ManualMask/leftMask/` and `rightMask/` (one half of the lungs each), the read-me PDF."""
    top = root / "MontgomerySet"
    for i in range(n):
        stem = f"MCUCXR_{i + 1:04d}_{i % 2}"
        _img(top / "CXR_png" / f"{stem}.png", 700 + i)
        (top / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (top / "ClinicalReadings" / f"{stem}.txt").write_text(
            f"Patient's Sex: {'MF'[i % 2]}\nPatient's Age: 0{40 + i}Y\n{'normal' if i % 2 == 0 else 'RUL TB'}\n"
        )
        for side, columns in (("leftMask", slice(8, 28)), ("rightMask", slice(36, 56))):
            mask = np.zeros((64, 64), np.uint8)
            mask[10:54, columns] = 255
            save(top / "ManualMask" / side / f"{stem}.png", mask)
    (top / "NLM-MontgomeryCXRSet-ReadMe.pdf").write_bytes(b"%PDF-1.4\n")
    return top


def shenzhen(root: Path, n: int = 4, masks: int = 2) -> Path:
    """`ChinaSet_AllFiles/` as NLM ships it (`CXR_png/CHNCXR_NNNN_L.png`, `ClinicalReadings/`), with the community
    lung masks (`mask/CHNCXR_NNNN_L_mask.png`) unpacked for the first few films only, as they cover part of it."""
    top = root / "ChinaSet_AllFiles"
    for i in range(n):
        stem = f"CHNCXR_{i + 1:04d}_{(i + 1) % 2}"
        _img(top / "CXR_png" / f"{stem}.png", 800 + i)
        (top / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (top / "ClinicalReadings" / f"{stem}.txt").write_text(f"male 4{i}yrs\nnormal\n")
        if i < masks:
            mask = np.zeros((64, 64), np.uint8)
            mask[8:56, 6:58] = 255
            save(top / "mask" / f"{stem}_mask.png", mask)
    (top / "CXR_png" / "Thumbs.db").write_bytes(b"\0")
    return top


def jsrt(root: Path) -> Path:
    """JSRT as its zip unpacks (`All247images/All247images/JPC{LN,NN}nnn.IMG`: headerless 2048 x 2048 big-endian
    12-bit words, 0 = white) with its clinical tables, and SCR's masks as its download has them
    (`scratch/fold{1,2}/masks/<organ>/<film>.gif`, 1024 x 1024, one GIF per organ), for all films but the last."""
    top = root / "JSRT"
    films = ["JPCLN001", "JPCLN002", "JPCNN001", "JPCNN002"]
    side = 2048
    y, x = np.mgrid[0:side, 0:side]
    for i, stem in enumerate(films):
        lungs = ((np.abs(x - side * 0.3) < side * 0.12) | (np.abs(x - side * 0.7) < side * 0.12)) & (
            np.abs(y - side * 0.5) < side * 0.3
        )
        words = np.where(lungs, 3600 - 40 * i, 800).astype(">u2")  # lungs are air: dark, high values in JSRT
        path = top / "All247images" / "All247images" / f"{stem}.IMG"
        path.parent.mkdir(parents=True, exist_ok=True)
        words.tofile(path)
        if i == len(films) - 1:
            continue
        fold = top / "scratch" / f"fold{1 + i % 2}" / "masks"
        half = side // 2
        for organ, columns in (("left lung", slice(486, 778)), ("right lung", slice(102, 368)),
                               ("heart", slice(400, 620))):  # fmt: skip
            mask = np.zeros((half, half), np.uint8)
            mask[205:820, columns] = 255
            save(fold / organ / f"{stem}.gif", mask)
    (top / "All247images" / "All247images" / "CLNDAT_EN.txt").write_text("JPCLN001.IMG\t3\t15\t53\tmale\n")
    (top / "CNNDAT_EN.txt").write_text("JPCNN001.IMG\t54\tmale\tnon-nodule\n")
    return top


def cohen(root: Path) -> Path:
    """`covid-chestxray-dataset/metadata.csv` (its real leading columns) over `images/`, with lungVAE's masks in
    `annotations/lungVAE-masks/<image stem>_mask.png` for some films; a CT row and a lateral view it leaves out."""
    top = root / "covid-chestxray-dataset"
    header = (
        "patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,view,modality,date,location,folder,"
        "filename"
    )
    rows = [
        ("2", "M", "65", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "images", "1-s2.0-S0140673620303706-fx1_lrg.jpg"),
        ("2", "M", "65", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "images", "ryct.2020200034.fig2.jpeg"),
        ("4", "F", "52", "Pneumonia/Viral/COVID-19", "AP Supine", "X-ray", "images", "nejmc2001573_f1a.jpeg"),
        ("7", "F", "", "No Finding", "PA", "X-ray", "images", "16630_2_2.png"),
        ("8", "M", "71", "Pneumonia/Bacterial/Streptococcus", "AP", "X-ray", "images", "streptococcus-1.jpg"),
        ("8", "M", "71", "Pneumonia/Bacterial/Streptococcus", "L", "X-ray", "images", "streptococcus-lat.jpg"),
        ("9", "M", "50", "Pneumonia/Viral/COVID-19", "Axial", "CT", "images", "covid-ct-1.jpg"),
    ]  # fmt: skip
    lines = [header]
    for seed, (pid, sex, age, finding, view, modality, folder, filename) in enumerate(rows):
        lines.append(f"{pid},0,{sex},{age},{finding},Y,,N,{view},{modality},2020,Somewhere,{folder},{filename}")
        _img(top / folder / filename, 900 + seed)
    (top / "metadata.csv").write_text("\n".join(lines) + "\n")
    for filename in ("nejmc2001573_f1a.jpeg", "16630_2_2.png"):
        mask = (smooth_image(950) > 100).astype(np.uint8) * 255
        save(top / "annotations" / "lungVAE-masks" / f"{Path(filename).stem}_mask.png", mask)
    return top
