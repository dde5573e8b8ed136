def main():
    import idna
    import yaml

    print(yaml.safe_dump({"host": idna.encode("bücher.example").decode()}), end="")
